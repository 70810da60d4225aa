"""Snapshot sources against real servers: a bare repo over file://, git daemon, smart HTTP through
git http-backend, and sshd on loopback; real GPG and SSH commit signatures; a real directory
watched with watchdog."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from reconciler.api.snapshot import SnapshotInvalid
from reconciler.sources import (
    DirectorySource,
    GitSource,
    Refusal,
    Revision,
    RevisionInvalid,
    SignatureRefused,
    SignatureVerification,
    Source,
    SourceError,
    read_snapshot,
)
from reconciler.sources.directory import SKIPPED_OUTSIDE
from tests.git_servers import (
    EXAMPLES,
    Daemon,
    GpgHomes,
    GpgKeys,
    HttpBackend,
    Signer,
    SshServer,
    SshSigningKeys,
    Upstream,
    free_port,
    git_daemon,
    run,
    ssh_keygen,
)

pytestmark = pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")

TRANSPORTS = ["file", "git", "http", "ssh"]
GIT_REVISION = re.compile(r"^main@sha1:[0-9a-f]{40}$")
EXTRA_BASELINE = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata:
  name: extra
spec:
  operatingSystem: UBUNTU
  approvalRules:
    - patchFilterGroup:
        patchFilters:
          - key: PRIORITY
            values: [Required]
"""
BROKEN_BASELINE = (
    EXTRA_BASELINE.replace("name: extra", "name: broken") + "      approveAfterDays: 999\n"
)
_names = itertools.count()


# --- servers and repositories ----------------------------------------------------------------


class Servers:
    """Every transport's server, all serving the bare repositories under ``root``."""

    def __init__(self, root: Path, daemon: Daemon, http: HttpBackend, ssh: SshServer) -> None:
        self.root, self.daemon, self.http, self.ssh = root, daemon, http, ssh

    def url(self, transport: str, upstream: Upstream) -> str:
        name = upstream.bare.name
        return {
            "file": f"file://{upstream.bare}",
            "git": f"git://127.0.0.1:{self.daemon.port}/{name}",
            "http": f"http://127.0.0.1:{self.http.port}/{name}",
            "ssh": f"ssh://root@127.0.0.1:{self.ssh.port}{upstream.bare}",
        }[transport]

    def source(
        self,
        transport: str,
        upstream: Upstream,
        workdir: Path,
        *,
        known_hosts_file: Path | None = None,
        verify: SignatureVerification | None = None,
    ) -> GitSource:
        ssh = transport == "ssh"
        return GitSource(
            self.url(transport, upstream),
            workdir=workdir,
            identity_file=self.ssh.client_key if ssh else None,
            known_hosts_file=known_hosts_file or (self.ssh.known_hosts if ssh else None),
            verify=verify,
            timeout=20,
        )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("srv")
    logs = tmp_path_factory.mktemp("logs")
    with (
        git_daemon(root, logs / "daemon.log") as daemon,
        HttpBackend(root) as http,
        SshServer(tmp_path_factory.mktemp("ssh")) as ssh,
    ):
        yield Servers(root, daemon, http, ssh)


@pytest.fixture
def upstream(servers: Servers, tmp_path: Path) -> Upstream:
    """A served repository whose main branch holds the example fleet."""
    repo = Upstream.create(servers.root, f"fleet{next(_names)}", tmp_path / "upstream")
    repo.copy_examples()
    repo.commit("the example fleet")
    return repo


# --- transports --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_transport_fetches_the_example_fleet_and_follows_new_commits(
    transport: str, servers: Servers, upstream: Upstream, tmp_path: Path
) -> None:
    source = servers.source(transport, upstream, tmp_path / "clone")

    revision, snapshot = source.snapshot()

    assert GIT_REVISION.match(str(revision))
    assert revision.sha == upstream.git("rev-parse", "HEAD")
    expected = read_snapshot(EXAMPLES)
    # Same resources at the same file:line as reading the directory: one set of walking rules.
    assert snapshot.locations == expected.locations
    assert snapshot.instances == expected.instances
    assert source.fetch()[0] == revision  # nothing new upstream: same revision

    upstream.write("baselines/extra.yaml", EXTRA_BASELINE)
    new_sha = upstream.commit("add a baseline")
    revision2, snapshot2 = source.snapshot()
    assert revision2.sha == new_sha != revision.sha
    assert "extra" in snapshot2.baselines


def test_ref_may_be_a_branch_a_tag_or_a_commit(
    servers: Servers, upstream: Upstream, tmp_path: Path
) -> None:
    main = upstream.git("rev-parse", "HEAD")
    upstream.git("tag", "--annotate", "v1", "-m", "release 1")
    upstream.git("push", "--quiet", "origin", "v1")
    upstream.write("baselines/extra.yaml", EXTRA_BASELINE)
    release = upstream.commit("release branch", branch="release")
    url = servers.url("file", upstream)
    cases = {
        "main": main,
        "release": release,
        "refs/heads/release": release,
        "v1": main,
        "refs/tags/v1": main,
        main: main,
        release: release,
    }

    for ref, sha in cases.items():
        # One workdir for all of them: the clone is kept and only fetched into.
        revision, files = GitSource(url, ref=ref, workdir=tmp_path / "clone").fetch()
        assert revision == Revision(url, ref, sha)
        assert ("baselines/extra.yaml" in dict(files)) == (sha == release)
    assert str(Revision(url, "v1", main)) == f"v1@sha1:{main}"

    for unknown in ("nope", "0" * 40):
        with pytest.raises(SourceError, match=f"no branch, tag or commit named '{unknown}'"):
            GitSource(url, ref=unknown, workdir=tmp_path / "clone").fetch()


def test_hidden_directories_symlinks_and_other_files_are_not_resources(
    servers: Servers, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.write(".github/workflows/ci.yaml", "not: [a resource")
    upstream.write("README.md", "# fleet")
    (upstream.work / "link.yaml").symlink_to("groups.yaml")
    upstream.commit("noise")

    _, files = servers.source("file", upstream, tmp_path / "clone").fetch()

    names = [name for name, _ in files]
    assert names == [name for name, _ in DirectorySource(EXAMPLES).fetch()[1]]


def test_an_oversized_file_is_refused_and_the_files_after_it_read_intact(
    servers: Servers, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.write("a-huge.yaml", "# padding\n" * 500_000)  # 5 MB, more than the 4 MiB limit
    upstream.commit("oversized")

    with pytest.raises(SnapshotInvalid) as caught:
        servers.source("file", upstream, tmp_path / "clone").snapshot()

    assert [p.file for p in caught.value.problems] == ["a-huge.yaml"]
    assert "larger than 4 MiB" in str(caught.value)


@pytest.mark.parametrize("known_hosts", ["empty", "another host key"])
def test_ssh_refuses_an_unknown_host_key(
    known_hosts: str, servers: Servers, upstream: Upstream, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    if known_hosts == "empty":
        known.write_text("")
    else:
        other = ssh_keygen(tmp_path / "impostor").split()[:2]
        known.write_text(f"[127.0.0.1]:{servers.ssh.port} {' '.join(other)}\n")
    before = known.read_text()
    source = servers.source("ssh", upstream, tmp_path / "clone", known_hosts_file=known)

    with pytest.raises(SourceError, match="Host key verification failed"):
        source.fetch()
    assert known.read_text() == before  # never learned the key


@pytest.mark.parametrize("scheme", ["git", "http", "ssh", "file"])
def test_an_unreachable_url_raises_source_error_saying_why(scheme: str, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = {
        "git": f"git://127.0.0.1:{port}/fleet.git",
        "http": f"http://127.0.0.1:{port}/fleet.git",
        "ssh": f"ssh://root@127.0.0.1:{port}/srv/fleet.git",
        "file": f"file://{tmp_path}/missing.git",
    }[scheme]
    reason = {
        "git": "unable to connect",
        "http": "Failed to connect",
        "ssh": "Connection refused",
        "file": "does not appear to be a git repository",
    }[scheme]

    with pytest.raises(SourceError, match=f"^cannot fetch {re.escape(url)}: .*{reason}"):
        GitSource(url, workdir=tmp_path / "clone", timeout=10).fetch()


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"git://127.0.0.1:{silent.getsockname()[1]}/fleet.git"
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"no answer within 1 s \(timeout\)"):
            GitSource(url, workdir=tmp_path / "clone", timeout=1).fetch()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("userinfo", ["deploy:s3cret", "s3cret", "s3cret:x-oauth-basic"])
def test_passwords_in_urls_stay_out_of_revisions_and_errors(userinfo: str, tmp_path: Path) -> None:
    url = f"http://{userinfo}@127.0.0.1:{free_port()}/fleet.git"
    source = GitSource(url, workdir=tmp_path / "clone", timeout=10)

    with pytest.raises(SourceError) as caught:
        source.fetch()

    assert "s3cret" not in str(caught.value)
    # The whole user part goes: a token is as often the user name as the password.
    assert source.public_url == url.replace(userinfo, "***")


TOKEN = "ghp_s3cretT0KEN0123456789"


def patchctl_umask_0(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``patchctl ARGS`` as a user with umask 000 runs it, with ``env`` added."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        umask=0,
        env={**os.environ, **env},
    )


FROM_ENVIRONMENT = {"PATCHWARDEN_GIT_USERNAME": "deploy", "PATCHWARDEN_GIT_PASSWORD": TOKEN}


@pytest.mark.parametrize(
    ("userinfo", "env", "credentials"),
    [
        (f"deploy:{TOKEN}@", {}, ("deploy", TOKEN)),
        (f"{TOKEN}@", {}, (TOKEN, "")),
        ("", FROM_ENVIRONMENT, ("deploy", TOKEN)),  # kept out of the process list
    ],
    ids=["user-and-password", "token-as-user", "from-the-environment"],
)
def test_url_credentials_fetch_yet_reach_no_output_record_or_file_and_the_clone_is_private(
    userinfo: str, env: dict[str, str], credentials: tuple[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    upstream = Upstream.create(root, "fleet", tmp_path / "upstream")
    upstream.write("baselines/extra.yaml", EXTRA_BASELINE)
    good = upstream.commit("one baseline")
    state = tmp_path / "state" / "state.db"
    wrong = {name: value.replace(TOKEN, "wrong-token") for name, value in env.items()}
    with HttpBackend(root, credentials) as http:
        where = f"127.0.0.1:{http.port}/fleet.git"
        reconcile = ["reconcile", "--source", f"http://{userinfo}{where}", "--state", str(state)]
        runs = [
            patchctl_umask_0(*reconcile, "-o", "json", env=env),
            # Failures quote the URL: into the log, the revisions table and the audit log.
            patchctl_umask_0(*reconcile, "--ref", "no-such-branch", env=env),
            patchctl_umask_0(*[a.replace(TOKEN, "wrong-token") for a in reconcile], env=wrong),
        ]
        with pytest.raises(SourceError, match="could not read Username"):
            GitSource(f"http://{where}", workdir=tmp_path / "anonymous", timeout=10).fetch()
    runs.append(patchctl_umask_0("audit", "--state", str(state), "-o", "json", env={}))

    assert runs[0].returncode == 0, runs[0].stderr
    assert json.loads(runs[0].stdout)["revision"] == f"main@sha1:{good}"  # fetched with it
    said = "".join(run.stdout + run.stderr for run in runs)
    assert "no branch, tag or commit named 'no-such-branch'" in said
    assert "Authentication failed" in said
    assert TOKEN not in said and "wrong-token" not in said
    assert f"http://{'***@' if userinfo else ''}{where}" in said
    files = [path for path in state.parent.rglob("*") if path.is_file()]
    assert {"state.db", "audit.jsonl", "config", "FETCH_HEAD"} <= {path.name for path in files}
    for path in files:
        assert TOKEN.encode() not in path.read_bytes(), path
    clones = state.parent / "git"
    for path in [clones, *clones.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o700 if path.is_dir() else mode & 0o077 == 0, (path, oct(mode))


def test_credentials_given_twice_or_for_another_scheme_are_refused(tmp_path: Path) -> None:
    given = ("deploy", "s3cret")
    for url, reason in [
        ("https://me:other@git.example/f.git", "credentials given twice"),
        ("ssh://git@git.example/f.git", "only used with http"),
        ("https://git.example/f.git", "line break"),
    ]:
        credentials = ("deploy", "s3cret\n") if reason == "line break" else given
        with pytest.raises(SourceError, match=reason) as caught:
            GitSource(url, workdir=tmp_path / "clone", credentials=credentials)
        assert "s3cret" not in str(caught.value) and "other" not in str(caught.value)


def test_a_clone_made_before_with_credentials_in_its_config_is_cleaned_and_made_private(
    servers: Servers, upstream: Upstream, tmp_path: Path
) -> None:
    clone = tmp_path / "clone"
    run(["git", "init", "--quiet", "--bare", str(clone)])  # 0755/0644, as older versions made
    token_url = f"http://{TOKEN}@127.0.0.1:{servers.http.port}/{upstream.bare.name}"
    run(["git", "config", "remote.origin.url", token_url], cwd=clone)

    GitSource(token_url, workdir=clone, timeout=20).fetch()

    assert TOKEN not in (clone / "config").read_text()
    for path in [clone, *clone.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


@pytest.mark.parametrize(
    "url",
    ["ssh://git:s3cret@host/fleet.git", "git://deploy:s3cret@host/fleet.git", "file://u@/srv/f"],
)
def test_credentials_git_would_ignore_are_refused(url: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"credentials in a \w+:// URL are not used") as caught:
        GitSource(url, workdir=tmp_path / "clone")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["ext::sh -c touch% /tmp/pwned", "fd::3", "/srv/fleet.git", "-oProxyCommand=x:y"]
)
def test_urls_that_could_run_commands_or_are_not_urls_are_refused(url: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a supported Git URL"):
        GitSource(url, workdir=tmp_path / "clone")


@pytest.mark.parametrize("ref", ["--upload-pack=touch /tmp/x", "main..evil", "a b", ""])
def test_refs_that_read_as_options_or_ranges_are_refused(ref: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a valid branch, tag or commit name"):
        GitSource("file:///srv/fleet.git", ref=ref, workdir=tmp_path / "clone")


def test_a_workdir_holding_something_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "clone").mkdir()
    (tmp_path / "clone" / "precious.txt").write_text("mine")

    with pytest.raises(SourceError, match="not empty and not a Git repository"):
        GitSource("file:///srv/fleet.git", workdir=tmp_path / "clone").fetch()


def test_a_commit_that_breaks_validation_is_refused_whole_with_file_and_line(
    servers: Servers, upstream: Upstream, tmp_path: Path
) -> None:
    source = servers.source("git", upstream, tmp_path / "clone")
    source.snapshot()
    upstream.write("baselines/broken.yaml", BROKEN_BASELINE)
    broken = upstream.commit("approve after 999 days")

    with pytest.raises(SnapshotInvalid) as caught:
        source.snapshot()

    assert isinstance(caught.value, RevisionInvalid)
    assert caught.value.revision.sha == broken
    assert [str(p) for p in caught.value.problems] == [
        "baselines/broken.yaml:12: spec.approvalRules[0].approveAfterDays: "
        + caught.value.problems[0].message
    ]


# --- signatures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKeys]:
    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed")
    with GpgHomes(tmp_path_factory.mktemp("gpg")) as keys:
        yield keys


@pytest.fixture(scope="module")
def ssh_signing(tmp_path_factory: pytest.TempPathFactory) -> SshSigningKeys:
    return SshSigningKeys.create(tmp_path_factory.mktemp("sshsig"))


class Signing:
    """One verification mode: its keyring, a trusted signer, a stranger, and the other format."""

    def __init__(self, mode: str, gpg: GpgKeys, ssh: SshSigningKeys) -> None:
        if mode == "gpg":
            self.verify = SignatureVerification("gpg", gpg.keyring)
            self.trusted, self.stranger = gpg.signer(gpg.trusted), gpg.signer(gpg.stranger)
            self.other_format = ssh.signer(ssh.trusted)
        else:
            self.verify = SignatureVerification("ssh", ssh.allowed_signers)
            self.trusted, self.stranger = ssh.signer(ssh.trusted), ssh.signer(ssh.stranger)
            self.other_format = gpg.signer(gpg.trusted)


@pytest.mark.parametrize("mode", ["gpg", "ssh"])
@pytest.mark.parametrize(
    ("head", "refusal"),
    [
        ("trusted", None),
        ("unsigned", Refusal.UNSIGNED),
        ("stranger", Refusal.UNTRUSTED_KEY),
        ("tampered", Refusal.BAD_SIGNATURE),
        ("other format", Refusal.WRONG_FORMAT),
    ],
)
def test_signature_gate(
    mode: str,
    head: str,
    refusal: Refusal | None,
    gpg_keys: GpgKeys,
    ssh_signing: SshSigningKeys,
    servers: Servers,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    signing = Signing(mode, gpg_keys, ssh_signing)
    signer: Signer | None = {
        "trusted": signing.trusted,
        "tampered": signing.trusted,
        "stranger": signing.stranger,
        "other format": signing.other_format,
    }.get(head)
    sha = upstream.commit(f"signed by {head}", signer)
    if head == "tampered":
        sha = upstream.tamper_head()
    source = servers.source("file", upstream, tmp_path / "clone", verify=signing.verify)

    if refusal is None:
        assert source.snapshot()[0].sha == sha
        return
    with pytest.raises(SignatureRefused) as caught:
        source.snapshot()
    assert caught.value.reason is refusal
    assert caught.value.revision.sha == sha
    assert str(caught.value).startswith(f"main@sha1:{sha} refused: {refusal.value}")


# --- directories -------------------------------------------------------------------------------


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    fleet = tmp_path / "fleet"
    shutil.copytree(EXAMPLES, fleet, ignore=shutil.ignore_patterns("inventories"))
    return fleet


def test_directory_revision_is_a_digest_of_paths_and_contents(fleet_dir: Path) -> None:
    source = DirectorySource(fleet_dir)
    revision, snapshot = source.snapshot()
    assert re.match(r"^dir@sha256:[0-9a-f]{64}$", str(revision))
    assert snapshot.locations == read_snapshot(EXAMPLES).locations

    (fleet_dir / ".git").mkdir()
    (fleet_dir / ".git" / "x.yaml").write_text("kind: Nonsense")
    (fleet_dir / "notes.txt").write_text("not a resource")
    assert source.fetch()[0] == revision

    groups = fleet_dir / "groups.yaml"
    groups.write_text(groups.read_text() + "# reviewed\n")
    edited = source.fetch()[0]
    assert edited != revision

    groups.rename(fleet_dir / "groups2.yaml")
    assert source.fetch()[0] not in (revision, edited)


def test_symlinks_to_files_outside_the_directory_are_skipped_with_a_warning(
    fleet_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.yaml"
    secret.write_text("root:$6$not-for-snapshots: [\n")  # would be echoed if parsed
    (fleet_dir / "stolen.yaml").symlink_to(secret)
    (fleet_dir / "baselines" / "escape.yaml").symlink_to("../../secret.yaml")
    # A ConfigMap volume's layout: links into a hidden directory of the same volume stay read.
    (fleet_dir / "..data").mkdir()
    (fleet_dir / "..data" / "extra.yaml").write_text(EXTRA_BASELINE)
    (fleet_dir / "extra.yaml").symlink_to("..data/extra.yaml")

    with structlog.testing.capture_logs() as logs:
        _, files = DirectorySource(fleet_dir).fetch()
        _, snapshot = DirectorySource(fleet_dir).snapshot()

    names = [name for name, _ in files]
    assert "extra.yaml" in names and "extra" in snapshot.baselines
    assert "stolen.yaml" not in names and "baselines/escape.yaml" not in names
    warned = {entry["file"] for entry in logs if entry["log_level"] == "warning"}
    assert warned == {"stolen.yaml", "baselines/escape.yaml"}
    assert all(entry["event"] == SKIPPED_OUTSIDE for entry in logs)

    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", "-o", "json", str(fleet_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    json.loads(done.stdout)  # the warning stays off stdout
    assert "stolen.yaml" in done.stderr and "skipped" in done.stderr
    assert "not-for-snapshots" not in done.stdout + done.stderr


def test_a_missing_directory_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a directory"):
        DirectorySource(tmp_path / "nowhere").fetch()
    with pytest.raises(SourceError, match="cannot watch"):
        DirectorySource(tmp_path / "nowhere").watch(lambda: None)


class Calls:
    """Counts callbacks from the watch thread; waits for the n-th."""

    def __init__(self) -> None:
        self.count = 0
        self.threads: set[threading.Thread] = set()  # the threads the calls came from
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self.threads.add(threading.current_thread())
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 5) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.count >= n, timeout)
            return self.count


def test_watch_fires_once_per_burst_of_resource_edits(fleet_dir: Path) -> None:
    calls, debounce = Calls(), 0.3
    stop = DirectorySource(fleet_dir).watch(calls, debounce=debounce)
    try:
        groups = fleet_dir / "groups.yaml"
        for i in range(5):
            groups.write_text(groups.read_text() + f"# edit {i}\n")
            time.sleep(0.01)
        assert calls.wait_for(1) == 1
        # The debounce is a quiet period in real time (no clock to inject): let it pass again.
        time.sleep(debounce * 3)
        assert calls.count == 1  # the burst is over: one call, not five

        (fleet_dir / ".git").mkdir()
        (fleet_dir / ".git" / "HEAD.yaml").write_text("x")
        (fleet_dir / "notes.txt").write_text("x")
        time.sleep(debounce * 3)
        assert calls.count == 1  # hidden directories and other files do not count

        (fleet_dir / "windows.yaml").unlink()
        assert calls.wait_for(2) == 2
        (fleet_dir / "baselines").rename(fleet_dir / "archive")
        assert calls.wait_for(3) == 3
    finally:
        stop()
    # stop() returns once the thread that calls back has ended: no call can come after it.
    assert calls.threads and not any(thread.is_alive() for thread in calls.threads)
    (fleet_dir / "instances.yaml").unlink()
    assert calls.count == 3  # stopped: no more calls


def test_both_kinds_are_sources(tmp_path: Path) -> None:
    # Checked by mypy: both classes satisfy the Source protocol the loop depends on.
    sources: list[Source] = [DirectorySource(tmp_path), GitSource("file:///x", workdir=tmp_path)]
    assert len(sources) == 2


def test_revision_names_its_digest_algorithm() -> None:
    assert str(Revision("file:///x", "main", "a" * 40)) == "main@sha1:" + "a" * 40
    assert str(Revision("/fleet", "dir", "b" * 64)) == "dir@sha256:" + "b" * 64
