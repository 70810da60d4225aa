{{/* Names and labels shared by every template. */}}

{{- define "patchwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "patchwarden.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "patchwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "patchwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "patchwarden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "patchwarden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "patchwarden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "patchwarden.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "patchwarden.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The agent image for node Jobs: its own values, else the controller image. */}}
{{- define "patchwarden.agentImage" -}}
{{- $repo := default .Values.image.repository .Values.nodeJobs.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.nodeJobs.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{- define "patchwarden.jobNamespace" -}}
{{- default .Release.Namespace .Values.nodeJobs.namespace }}
{{- end }}

{{- define "patchwarden.leaseName" -}}
{{- default (include "patchwarden.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "patchwarden.nodeAgentServiceAccountName" -}}
{{- printf "%s-node-agent" (include "patchwarden.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The node Job settings the controller reads from /etc/patchwarden/config/node-job.yaml
     (reconciler/dispatch/nodes NodeSettings.from_values: camelCase keys). */}}
{{- define "patchwarden.nodeJobConfig" -}}
namespace: {{ include "patchwarden.jobNamespace" . }}
image: {{ include "patchwarden.agentImage" . }}
imagePullPolicy: {{ .Values.nodeJobs.image.pullPolicy }}
serviceAccountName: {{ include "patchwarden.nodeAgentServiceAccountName" . }}
agentPath: {{ .Values.nodeJobs.agentPath }}
{{- with .Values.nodeJobs.agentRoot }}
agentRoot: {{ . | quote }}
{{- end }}
hostDir: {{ .Values.nodeJobs.hostDir | quote }}
hostPid: {{ int .Values.nodeJobs.hostPid }}
jobTimeoutSeconds: {{ .Values.nodeJobs.jobTimeoutSeconds }}
drainTimeoutSeconds: {{ .Values.nodeJobs.drainTimeoutSeconds }}
rebootTimeoutSeconds: {{ .Values.nodeJobs.rebootTimeoutSeconds }}
ttlSecondsAfterFinished: {{ .Values.nodeJobs.ttlSecondsAfterFinished }}
{{- with .Values.nodeJobs.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - {{ .name }}
{{- end }}
{{- end }}
resources:
{{- toYaml .Values.nodeJobs.resources | nindent 2 }}
tolerations:
{{- toYaml .Values.nodeJobs.tolerations | nindent 2 }}
{{- end }}

{{/* The PersistentVolumeClaim holding the state database: the user's, else the chart's. */}}
{{- define "patchwarden.stateClaimName" -}}
{{- default (printf "%s-state" (include "patchwarden.fullname" .) | trunc 63 | trimSuffix "-") .Values.persistence.existingClaim }}
{{- end }}

{{/* Value combinations values.schema.json cannot say clearly. SQLite's WAL (the store's journal)
     works only when every process using the file is on one host, so a persisted store is never
     shared between replicas (https://www.sqlite.org/wal.html); PostgreSQL state is shared by
     design. A setting that would be ignored is refused, never accepted. */}}
{{- define "patchwarden.validate" -}}
{{- $pg := .Values.state.postgresql }}
{{- if and .Values.persistence.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "replicaCount is %d but persistence.enabled is true: the controller's SQLite state cannot be shared between replicas (its WAL journal needs every process on one host, even on a ReadWriteMany volume). Set replicaCount: 1 (a restarted pod keeps its history on the volume), persistence.enabled: false for standby replicas that start without history, or state.postgresql.existingSecret (with persistence.enabled: false) for standbys sharing one PostgreSQL database (docs/scaling.md)." (int .Values.replicaCount)) }}
{{- end }}
{{- if and $pg.existingSecret .Values.persistence.enabled }}
{{- fail "state.postgresql.existingSecret is set but persistence.enabled is true: the state lives in PostgreSQL, so the volume would hold nothing. Set persistence.enabled: false." }}
{{- end }}
{{- if and (not $pg.existingSecret) (or $pg.ca.secret $pg.ca.configMap) }}
{{- fail "state.postgresql.ca is set but state.postgresql.existingSecret is empty: the CA is for a PostgreSQL state store. Set state.postgresql.existingSecret (the Secret holding its URL), or remove state.postgresql.ca." }}
{{- end }}
{{- if and (gt (int .Values.workers.replicas) 0) (not $pg.existingSecret) }}
{{- fail (printf "workers.replicas is %d but state.postgresql.existingSecret is empty: workers claim their jobs from a PostgreSQL state every process shares, which SQLite cannot be. Set state.postgresql.existingSecret (with persistence.enabled: false), or workers.replicas: 0 (the controller runs the jobs itself)." (int .Values.workers.replicas)) }}
{{- end }}
{{- if and $pg.ca.secret $pg.ca.configMap }}
{{- fail "state.postgresql.ca names both a secret and a configMap: give the CA certificate in one of them." }}
{{- end }}
{{- if and $pg.existingSecret (hasPrefix "verify-" $pg.sslmode) (not (or $pg.ca.secret $pg.ca.configMap)) }}
{{- fail (printf "state.postgresql.sslmode is %s but no CA is given to verify the server with: set state.postgresql.ca.secret or state.postgresql.ca.configMap (a key %s holding the CA certificate), or sslmode: require (encrypted, the server not authenticated)." $pg.sslmode $pg.ca.key) }}
{{- end }}
{{- include "patchwarden.validateNotify" . }}
{{- end }}

{{/* How patchctl reaches the PostgreSQL state (controller and workers alike): the URL and its
     password through the environment from the user's Secret (never args, which every user of the
     node can read in /proc), TLS through libpq's own variables. */}}
{{- define "patchwarden.postgresqlEnv" -}}
{{- $pg := .Values.state.postgresql }}
{{- if $pg.existingSecret }}
- name: PATCHWARDEN_STATE
  valueFrom:
    secretKeyRef:
      name: {{ $pg.existingSecret }}
      key: {{ $pg.urlKey }}
- name: PGSSLMODE
  value: {{ $pg.sslmode }}
{{- if or $pg.ca.secret $pg.ca.configMap }}
- name: PGSSLROOTCERT
  value: /etc/patchwarden/postgresql/{{ $pg.ca.key }}
{{- end }}
{{- end }}
{{- end }}

{{- define "patchwarden.postgresqlMounts" -}}
{{- if or .Values.state.postgresql.ca.secret .Values.state.postgresql.ca.configMap }}
- name: postgresql-ca
  mountPath: /etc/patchwarden/postgresql
  readOnly: true
{{- end }}
{{- end }}

{{- define "patchwarden.postgresqlVolumes" -}}
{{- $ca := .Values.state.postgresql.ca }}
{{- if $ca.secret }}
- name: postgresql-ca
  secret:
    secretName: {{ $ca.secret }}
    defaultMode: 0440
    items:
      - key: {{ $ca.key }}
        path: {{ $ca.key }}
{{- else if $ca.configMap }}
- name: postgresql-ca
  configMap:
    name: {{ $ca.configMap }}
    defaultMode: 0440
    items:
      - key: {{ $ca.key }}
        path: {{ $ca.key }}
{{- end }}
{{- end }}

{{/* Every pod of the chart (controller, workers): non-root, no privilege, RuntimeDefault seccomp,
     a read-only root filesystem. */}}
{{- define "patchwarden.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "patchwarden.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Workers' pods carry their own name, so neither the controller's Deployment nor its metrics
     Service (both select patchwarden.selectorLabels) ever picks them up. */}}
{{- define "patchwarden.workerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "patchwarden.name" . }}-worker
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "patchwarden.workerLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "patchwarden.workerSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "patchwarden.workerServiceAccountName" -}}
{{- printf "%s-worker" (include "patchwarden.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Notices to people (docs/notifications.md). The webhook URLs and the SMTP login are read by
     patchctl from files (`file:PATH`) of the user's Secret mounted read-only, so no secret is in
     the pod's args, its environment or anything the chart renders. */}}
{{- define "patchwarden.notifyDir" -}}
/etc/patchwarden/notify
{{- end }}

{{/* The Secret's keys the controller reads: only these are mounted. */}}
{{- define "patchwarden.notifyKeys" -}}
{{- $n := .Values.notifications }}
{{- $keys := concat $n.slack.urlKeys $n.teams.urlKeys }}
{{- with $n.email.smtp.loginKey }}
{{- $keys = append $keys . }}
{{- end }}
{{- $keys | uniq | toJson }}
{{- end }}

{{- define "patchwarden.notifyArgs" -}}
{{- $n := .Values.notifications }}
{{- $dir := include "patchwarden.notifyDir" . }}
{{- range $chat := list "slack" "teams" }}
{{- $sink := get $n $chat }}
{{- range $sink.urlKeys }}
- {{ printf "--events-%s=file:%s/%s" $chat $dir . | quote }}
{{- end }}
{{- with $sink.kinds }}
- {{ printf "--events-%s-kinds=%s" $chat (join "," .) | quote }}
{{- end }}
{{- end }}
{{- $mail := $n.email }}
{{- if $mail.to }}
{{- range $mail.to }}
- {{ printf "--events-email=%s" . | quote }}
{{- end }}
- {{ printf "--events-smtp=%s:%d" $mail.smtp.host (int $mail.smtp.port) | quote }}
- {{ printf "--events-smtp-from=%s" $mail.from | quote }}
{{- if $mail.smtp.starttls }}
- --events-smtp-starttls
{{- end }}
{{- with $mail.smtp.loginKey }}
- {{ printf "--events-smtp-login=file:%s/%s" $dir . | quote }}
{{- end }}
{{- with $mail.kinds }}
- {{ printf "--events-email-kinds=%s" (join "," .) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "patchwarden.notifyMounts" -}}
{{- if (include "patchwarden.notifyKeys" . | fromJsonArray) }}
- name: notify
  mountPath: {{ include "patchwarden.notifyDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "patchwarden.notifyVolumes" -}}
{{- $keys := include "patchwarden.notifyKeys" . | fromJsonArray }}
{{- if $keys }}
- name: notify
  secret:
    secretName: {{ .Values.notifications.existingSecret }}
    defaultMode: 0440
    items:
      {{- range $keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- end }}

{{/* Notification values that would be ignored, or that patchctl would refuse at start (a pod
     in CrashLoopBackOff says it later and less clearly), are refused here. */}}
{{- define "patchwarden.validateNotify" -}}
{{- $n := .Values.notifications }}
{{- $keys := include "patchwarden.notifyKeys" . | fromJsonArray }}
{{- if and $keys (not $n.existingSecret) }}
{{- fail (printf "notifications names the keys %s but notifications.existingSecret is empty: set it to the Secret (in the release namespace) that holds the webhook URLs and the SMTP login." (join ", " $keys)) }}
{{- end }}
{{- if and $n.existingSecret (not $keys) }}
{{- fail "notifications.existingSecret is set but no key of it is used: name them in notifications.slack.urlKeys, notifications.teams.urlKeys or notifications.email.smtp.loginKey, or remove notifications.existingSecret." }}
{{- end }}
{{- range $chat := list "slack" "teams" }}
{{- $sink := get $n $chat }}
{{- if and $sink.kinds (not $sink.urlKeys) }}
{{- fail (printf "notifications.%s.kinds is set but notifications.%s.urlKeys is empty: name the Secret's keys holding the webhook URLs, or remove the kinds." $chat $chat) }}
{{- end }}
{{- end }}
{{- $mail := $n.email }}
{{- if and (not $mail.to) (or $mail.from $mail.kinds $mail.smtp.host $mail.smtp.loginKey $mail.smtp.starttls) }}
{{- fail "notifications.email is configured but notifications.email.to is empty: give the addresses to mail, or remove the other notifications.email values." }}
{{- end }}
{{- if and $mail.to (not (and $mail.smtp.host $mail.from)) }}
{{- fail "notifications.email.to is set but notifications.email.smtp.host or notifications.email.from is empty: mail needs a server and a sender." }}
{{- end }}
{{- if and $mail.smtp.loginKey (not $mail.smtp.starttls) (not (has $mail.smtp.host (list "localhost" "127.0.0.1" "::1" "[::1]"))) }}
{{- fail (printf "notifications.email.smtp.loginKey is set but starttls is false: a password is never sent in the clear to %s. Set notifications.email.smtp.starttls: true (port 587 for submission)." $mail.smtp.host) }}
{{- end }}
{{- end }}
