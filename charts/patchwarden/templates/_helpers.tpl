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
     shared between replicas (https://www.sqlite.org/wal.html). */}}
{{- define "patchwarden.validate" -}}
{{- if and .Values.persistence.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "replicaCount is %d but persistence.enabled is true: the controller's SQLite state cannot be shared between replicas (its WAL journal needs every process on one host, even on a ReadWriteMany volume). Set replicaCount: 1 (a restarted pod keeps its history on the volume), or persistence.enabled: false for standby replicas that start without history." (int .Values.replicaCount)) }}
{{- end }}
{{- end }}
