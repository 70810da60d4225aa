"""Stage: sources. Snapshots from a Git repository: file://, git://, http(s):// or ssh://.

:class:`GitSource` keeps one bare clone in its ``workdir`` and fetches into it on every
:meth:`~GitSource.fetch` (a no-op negotiation when nothing changed), resolves ``ref`` (branch, tag
or full commit id) to a commit, optionally checks the commit's signature, and reads the resource
files of that commit straight from the object store: there is no checkout, so nothing on disk can
drift from the commit the revision names. Git runs as argv lists through GitPython; the only
strings git hands to a shell are ``GIT_SSH_COMMAND``, built with :func:`shlex.join`, and the
fixed credential helper below.

Credentials in an http(s) URL (``https://user:password@host/…``, ``https://TOKEN@host/…``) never
reach a file, an argv or a message: the clone's config holds the URL without them, git gets them
at fetch time from a credential helper that reads this process's environment (``GIT_CONFIG_*``),
and every message carries :func:`~reconciler.redaction.redacted` URLs. May import ``api`` and
``defaults``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from git import Blob, Commit, Repo, Tree

from reconciler.api.snapshot import Snapshot
from reconciler.api.yamldocs import MAX_BYTES
from reconciler.redaction import redacted
from reconciler.sources.base import (
    Files,
    Revision,
    SourceError,
    is_resource,
    validated,
    walk_order,
)
from reconciler.sources.enrol.base import DiscoveryRefused
from reconciler.sources.gitcmd import init_bare, run_git
from reconciler.sources.signatures import SignatureVerification, check_signature

SCHEMES = ("file", "git", "http", "https", "ssh")
# ext:: and fd:: would let a URL run commands; git itself refuses anything not listed here.
_ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:[^-\s]")
_REF = re.compile(r"^(?!-)(?!.*\.\.)[\w./+-]+$")
_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_REFSPECS = ("+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
_REGULAR_FILE = 0o100000
# Answers only for the origin it was given, so a redirect to another host never gets them; the
# values come from the environment, never from argv (``ps``) or a file.
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || return 0; '
    'while read -r l; do case "$l" in protocol=*) p=${l#protocol=};; host=*) h=${l#host=};; '
    'esac; done; test "$p://$h" = "$PATCHWARDEN_GIT_ORIGIN" || return 0; '
    "printf 'username=%s\\npassword=%s\\n' "
    '"$PATCHWARDEN_GIT_USERNAME" "$PATCHWARDEN_GIT_PASSWORD"; }; f'
)
_BOILERPLATE = re.compile(
    r"^(Could not read from remote repository|Please make sure you have the correct access"
    r"|and the repository exists)"
)


class GitSource:
    """A branch, tag or commit of a Git repository as a snapshot source (see ``Source``)."""

    def __init__(
        self,
        url: str,
        *,
        ref: str = "main",
        workdir: Path,
        identity_file: Path | None = None,
        known_hosts_file: Path | None = None,
        verify: SignatureVerification | None = None,
        timeout: float = 60,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """``credentials`` (user, password) for an http(s) URL, instead of putting them in it
        (where a process list shows them)."""
        self.url, in_url = _split_credentials(_checked_url(url))
        self._credentials = _given_once(self.url, in_url, credentials)
        self.ref = _checked_ref(ref)
        self.workdir = workdir
        self.identity_file = identity_file
        self.known_hosts_file = known_hosts_file
        self.verify = verify
        self.timeout = timeout
        self.public_url = redacted(url)

    def fetch(self) -> tuple[Revision, Files]:
        """Fetch, resolve ``ref``, check the signature if asked, and read the commit's files."""
        with self._open() as repo:
            self._git(repo, "fetch", "--prune", "origin", *_REFSPECS)
            commit = self._resolve(repo)
            revision = Revision(
                self.public_url,
                self.ref,
                commit.hexsha,
                author=f"{commit.author.name} <{commit.author.email}>",
            )
            if self.verify is not None:
                check_signature(repo, commit, self.verify, revision, self.timeout)
            return revision, files_at(commit)

    def snapshot(self) -> tuple[Revision, Snapshot]:
        """The validated snapshot of the current revision; RevisionInvalid when it is refused."""
        return validated(*self.fetch())

    def repository(self, revision: Revision) -> CommitFiles:
        """The files of ``revision``'s commit, for enrolment (an Ansible inventory). Read-only:
        the clone is not configured again (a fetch may be writing to it meanwhile)."""
        return CommitFiles(Repo(self.workdir).commit(revision.sha))

    def watch(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """Never calls ``on_change``: a remote repository says nothing when it changes, so the
        loop fetches it on every pass instead."""
        return lambda: None

    def _open(self) -> Repo:
        """The workdir's bare clone, created on first use and pointed at ``url``."""
        if (self.workdir / "HEAD").is_file():
            _make_private(self.workdir)
        elif not self.workdir.exists() or not any(self.workdir.iterdir()):
            _private_dirs(self.workdir)
            status, _, stderr = init_bare(self.workdir, timeout=self.timeout)
            if status != 0:
                raise SourceError(f"{self.workdir}: cannot create a clone: {stderr.strip()}")
        else:
            raise SourceError(f"{self.workdir}: not empty and not a Git repository")
        repo = Repo(self.workdir)
        # Set every time, so a changed URL takes effect without a fresh clone (and a URL an
        # older version stored with credentials is replaced by one without).
        self._git(repo, "config", "remote.origin.url", self.url)
        return repo

    def _resolve(self, repo: Repo) -> Commit:
        commit = self._lookup(repo)
        if commit is None and _FULL_SHA.match(self.ref):
            # A commit no branch or tag reaches: only some servers send it when asked by id.
            with contextlib.suppress(SourceError):
                self._git(repo, "fetch", "origin", self.ref)
            commit = self._lookup(repo)
        if commit is None:
            raise SourceError(f"{self.public_url}: no branch, tag or commit named {self.ref!r}")
        return commit

    def _lookup(self, repo: Repo) -> Commit | None:
        for name in self._candidates():
            status, sha, _ = run_git(
                repo, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", timeout=self.timeout
            )
            if status == 0:
                return repo.commit(sha)
        return None

    def _candidates(self) -> list[str]:
        """Local names ``ref`` may have after a fetch, in the order git itself would prefer."""
        if _FULL_SHA.match(self.ref):
            return [self.ref]
        if self.ref.startswith("refs/heads/"):
            return ["refs/remotes/origin/" + self.ref.removeprefix("refs/heads/")]
        if self.ref.startswith("refs/tags/"):
            return [self.ref]
        return [f"refs/remotes/origin/{self.ref}", f"refs/tags/{self.ref}"]

    def _git(self, repo: Repo, *args: str) -> str:
        status, stdout, stderr = run_git(repo, *args, env=self._env(), timeout=self.timeout)
        if status != 0:
            raise SourceError(f"cannot fetch {self.public_url}: {self._explain(stderr)}")
        return stdout

    def _env(self) -> dict[str, str]:
        env = {
            "GIT_ALLOW_PROTOCOL": _ALLOWED_PROTOCOLS,
            "GIT_TERMINAL_PROMPT": "0",  # a service has nobody to type a password
            "GIT_SSH_COMMAND": shlex.join(self._ssh_argv()),
            "GIT_SSH_VARIANT": "ssh",
        }
        return env | self._credential_env() if self._credentials else env

    def _credential_env(self) -> dict[str, str]:
        """The URL's credentials for git's next fetch. The empty ``credential.helper`` first
        drops the host's helpers, so none of them stores the token (``store`` would write it to
        ``~/.git-credentials``)."""
        username, password = self._credentials or ("", "")
        parts = urlsplit(self.url)
        return {
            "GIT_CONFIG_COUNT": "2",
            "GIT_CONFIG_KEY_0": "credential.helper",
            "GIT_CONFIG_VALUE_0": "",
            "GIT_CONFIG_KEY_1": "credential.helper",
            "GIT_CONFIG_VALUE_1": _CREDENTIAL_HELPER,
            "PATCHWARDEN_GIT_ORIGIN": f"{parts.scheme}://{parts.netloc}",
            "PATCHWARDEN_GIT_USERNAME": username,
            "PATCHWARDEN_GIT_PASSWORD": password,
        }

    def _ssh_argv(self) -> list[str]:
        # Always strict: an unknown or changed host key is refused, whatever ~/.ssh/config says,
        # because options on the command line win over the configuration files.
        argv = ["ssh", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
        argv += ["-o", f"ConnectTimeout={max(1, int(self.timeout))}"]
        if self.identity_file is not None:
            argv += ["-i", str(self.identity_file), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts_file is not None:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts_file}"]
            argv += ["-o", "GlobalKnownHostsFile=/dev/null"]
        return argv

    def _explain(self, stderr: str) -> str:
        """git's complaint on one line, without the generic advice it adds to every failure."""
        if stderr.startswith("Timeout:"):  # GitPython's note after killing a hung git
            return f"no answer within {self.timeout:g} s (timeout)"
        lines = [line.strip() for line in redacted(stderr).splitlines()]
        reasons = [re.sub(r"^(fatal|error): ", "", line) for line in lines if line]
        specific = [line for line in reasons if not _BOILERPLATE.match(line)]
        return "; ".join(specific or reasons) or "git failed without a message"


def files_at(commit: Commit) -> Files:
    """The resource files of ``commit``'s tree, by the same rules and order as a directory.

    Symbolic links and submodules are skipped: their "content" is a path or a commit id.
    """

    def hidden(item: object, _depth: int) -> bool:
        # Prune hidden trees whole (.git-crypt, .github); hidden files fail is_resource anyway.
        return isinstance(item, Tree) and item.name.startswith(".")

    files: Files = []
    for item in commit.tree.traverse(prune=hidden):
        if not isinstance(item, Blob) or item.mode & 0o170000 != _REGULAR_FILE:
            continue
        relpath = str(item.path)  # a tree's blobs carry posix paths from the tree root
        if is_resource(relpath):
            files.append((relpath, item.data_stream.read(MAX_BYTES + 1)))
    return sorted(files, key=lambda file: walk_order(file[0]))


class CommitFiles:
    """A commit's tree as enrolment's Repository: regular files only (no links, no submodules)."""

    def __init__(self, commit: Commit) -> None:
        self.commit = commit

    def read(self, relpath: str) -> bytes:
        try:
            item = self.commit.tree / relpath
        except KeyError:
            item = None
        if not isinstance(item, Blob) or item.mode & 0o170000 != _REGULAR_FILE:
            raise DiscoveryRefused(f"{relpath}: no such file in commit {self.commit.hexsha[:12]}")
        return bytes(item.data_stream.read(MAX_BYTES + 1))

    def files_under(self, folder: str) -> list[str]:
        try:
            tree = self.commit.tree / folder
        except KeyError:
            return []
        if not isinstance(tree, Tree):
            return []
        return sorted(
            str(item.path)
            for item in tree.traverse()
            if isinstance(item, Blob) and item.mode & 0o170000 == _REGULAR_FILE
        )


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its user information, and the http(s) credentials it held.

    A token alone (``https://TOKEN@host``) is the user name with an empty password, as GitHub
    and Gitea take it. An ssh user name stays in the URL (it names the account, not a secret);
    a password anywhere else would be ignored by git, so it is refused.
    """
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or "://" not in url:
        return url, None
    user, colon, password = userinfo.partition(":")
    if parts.scheme == "ssh" and not colon:
        return url, None
    if parts.scheme not in ("http", "https"):
        raise SourceError(
            f"{redacted(url)!r}: credentials in a {parts.scheme}:// URL are not used "
            "(http(s) URLs take user:password@ or TOKEN@; ssh uses --identity-file)"
        )
    return urlunsplit(parts._replace(netloc=host)), (unquote(user), unquote(password))


def _given_once(
    url: str, in_url: tuple[str, str] | None, given: tuple[str, str] | None
) -> tuple[str, str] | None:
    """The credentials to fetch ``url`` (already without them) with, from the URL or given."""
    if in_url is not None and given is not None:
        raise SourceError(f"{url!r}: credentials given twice (in the URL and apart): give one")
    if given is not None and urlsplit(url).scheme not in ("http", "https"):
        raise SourceError(f"{url!r}: credentials are only used with http(s):// URLs")
    credentials = in_url or given
    if credentials and any(char in "\r\n\0" for value in credentials for char in value):
        raise SourceError(f"{url!r}: the credentials hold a line break")
    return credentials


def _private_dirs(path: Path) -> None:
    """``path`` 0700 (an empty directory given is taken over), and its missing parents created
    0700, whatever the umask. Existing parents stay as they are: they may be shared, /var/lib."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered through the umask
    os.chmod(path, 0o700)


def _make_private(workdir: Path) -> None:
    """A clone made by an older version (0755/0644, maybe credentials in its config): take
    every group and other permission away once. A clone already 0700 is left alone."""
    if workdir.stat().st_mode & 0o077 == 0:
        return
    for dirpath, _dirnames, filenames in os.walk(workdir):
        for name in filenames:
            file = os.path.join(dirpath, name)
            os.chmod(file, os.stat(file).st_mode & 0o700)
        os.chmod(dirpath, 0o700)


def _checked_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if (scheme in SCHEMES and "://" in url) or _SCP_LIKE.match(url):
        return url
    raise SourceError(
        f"{redacted(url)!r}: not a supported Git URL (file://, git://, http(s)://, ssh://)"
    )


def _checked_ref(ref: str) -> str:
    # Refs reach git as arguments: refuse anything that could read as an option or a range.
    if _REF.match(ref) and not ref.endswith((".", "/", ".lock")):
        return ref
    raise SourceError(f"{ref!r}: not a valid branch, tag or commit name")
