"""Stage: sources. Snapshots from a Git repository: file://, git://, http(s):// or ssh://.

:class:`GitSource` keeps one bare clone in its ``workdir`` and fetches into it on every
:meth:`~GitSource.fetch` (a no-op negotiation when nothing changed), resolves ``ref`` (branch, tag
or full commit id) to a commit, optionally checks the commit's signature, and reads the resource
files of that commit straight from the object store: there is no checkout, so nothing on disk can
drift from the commit the revision names. Git runs as argv lists through GitPython; the only
string git hands to a shell is ``GIT_SSH_COMMAND``, built with :func:`shlex.join`. May import
``api`` and ``defaults``.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from git import Blob, Commit, Repo, Tree

from reconciler.api.snapshot import Snapshot
from reconciler.api.yamldocs import MAX_BYTES
from reconciler.sources.base import (
    Files,
    Revision,
    SourceError,
    is_resource,
    validated,
    walk_order,
)
from reconciler.sources.gitcmd import run_git
from reconciler.sources.signatures import SignatureVerification, check_signature

SCHEMES = ("file", "git", "http", "https", "ssh")
# ext:: and fd:: would let a URL run commands; git itself refuses anything not listed here.
_ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:[^-\s]")
_REF = re.compile(r"^(?!-)(?!.*\.\.)[\w./+-]+$")
_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_REFSPECS = ("+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
_REGULAR_FILE = 0o100000
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
    ) -> None:
        self.url = _checked_url(url)
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

    def watch(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """Never calls ``on_change``: a remote repository says nothing when it changes, so the
        loop fetches it on every pass instead."""
        return lambda: None

    def _open(self) -> Repo:
        """The workdir's bare clone, created on first use and pointed at ``url``."""
        if (self.workdir / "HEAD").is_file():
            repo = Repo(self.workdir)
        elif not self.workdir.exists() or not any(self.workdir.iterdir()):
            repo = Repo.init(self.workdir, mkdir=True, bare=True)
        else:
            raise SourceError(f"{self.workdir}: not empty and not a Git repository")
        # Set every time, so a changed URL takes effect without a fresh clone.
        repo.git.config("remote.origin.url", self.url)
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
        return {
            "GIT_ALLOW_PROTOCOL": _ALLOWED_PROTOCOLS,
            "GIT_TERMINAL_PROMPT": "0",  # a service has nobody to type a password
            "GIT_SSH_COMMAND": shlex.join(self._ssh_argv()),
            "GIT_SSH_VARIANT": "ssh",
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
        lines = [line.strip() for line in stderr.replace(self.url, self.public_url).splitlines()]
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


def redacted(url: str) -> str:
    """``url`` without a password, fit for logs, revisions and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


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
