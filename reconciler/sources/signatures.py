"""Stage: sources. The signature gate: a Git revision is used only if its head commit is signed by
a trusted key.

Two kinds of trust, as ``git verify-commit`` knows them:

- ``gpg``: ``keyring`` is a GNUPGHOME directory. Every public key in it is trusted, so the keyring
  *is* the list of people allowed to change the fleet; no ownertrust needs setting.
- ``ssh``: ``keyring`` is an allowed_signers file (``gpg.ssh.allowedSignersFile``); only keys
  listed there are trusted.

Git decides, through ``%G?``; this module only maps its verdict to a :class:`Refusal`. The user's
global and system Git configuration is ignored while verifying, so a ``gpg.program`` or another
allowed_signers file set there cannot widen the trust. May import ``api`` and ``defaults``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from reconciler.sources.base import Refusal, Revision, SignatureRefused, SourceError
from reconciler.sources.gitcmd import run_git

if TYPE_CHECKING:  # GitPython only for the types: reconciler.sources imports this module
    from git import Commit, Repo

# The armour header of each signature format, as stored in the commit's gpgsig header.
_HEADERS = {"gpg": "-----BEGIN PGP SIGNATURE-----", "ssh": "-----BEGIN SSH SIGNATURE-----"}
# %G? codes that pass. "U" is a good signature from a key without ownertrust: for gpg that key is
# in the keyring, hence trusted; for ssh it means no principal in allowed_signers has the key.
_ACCEPTED = {"gpg": frozenset("GU"), "ssh": frozenset("G")}
_REFUSALS = {
    "N": Refusal.UNSIGNED,
    "B": Refusal.BAD_SIGNATURE,
    "U": Refusal.UNTRUSTED_KEY,
    "X": Refusal.EXPIRED_OR_REVOKED,
    "Y": Refusal.EXPIRED_OR_REVOKED,
    "R": Refusal.EXPIRED_OR_REVOKED,
}


@dataclass(frozen=True)
class SignatureVerification:
    """How to check the head commit's signature: ``gpg`` with a GNUPGHOME keyring, or ``ssh``
    with an allowed_signers file."""

    mode: Literal["gpg", "ssh"]
    keyring: Path

    def __post_init__(self) -> None:
        if self.mode not in _HEADERS:
            raise ValueError(f"signature mode {self.mode!r}: expected 'gpg' or 'ssh'")

    def env(self) -> dict[str, str]:
        """The environment that makes git verify against this keyring and nothing else."""
        env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
        if self.mode == "gpg":
            return env | {"GNUPGHOME": str(self.keyring.absolute())}
        return env | {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "gpg.ssh.allowedSignersFile",
            "GIT_CONFIG_VALUE_0": str(self.keyring.absolute()),
        }


def check_signature(
    repo: Repo,
    commit: Commit,
    verification: SignatureVerification,
    revision: Revision,
    timeout: float,
) -> None:
    """Return if ``commit`` carries a good signature from a trusted key; else SignatureRefused."""
    if not verification.keyring.exists():
        raise SourceError(f"signature keyring {verification.keyring} does not exist")
    signature = commit.gpgsig or ""
    if not signature:
        raise SignatureRefused(revision, Refusal.UNSIGNED)
    if not signature.lstrip().startswith(_HEADERS[verification.mode]):
        # Checked first so that, say, an OpenPGP signature is never judged by ~/.gnupg when
        # only SSH keys are meant to be trusted.
        first = signature.lstrip().splitlines()[0]
        raise SignatureRefused(
            revision, Refusal.WRONG_FORMAT, f"{first}, expected {verification.mode}"
        )
    code, key, signer = _verdict(repo, commit, verification, timeout)
    if code in _ACCEPTED[verification.mode]:
        return
    detail = ", ".join(part for part in (signer, f"key {key}" if key else "") if part)
    raise SignatureRefused(revision, _refusal(code, verification), detail)


def _verdict(
    repo: Repo, commit: Commit, verification: SignatureVerification, timeout: float
) -> tuple[str, str, str]:
    """Git's verdict on ``commit``: (%G? code, signing key, signer)."""
    status, out, err = run_git(
        repo,
        "show",
        "--no-patch",
        "--format=%G?%x00%GK%x00%GS",
        commit.hexsha,
        env=verification.env(),
        timeout=timeout,
    )
    fields = out.split("\0")
    if status != 0 or len(fields) != 3:
        raise SourceError(f"cannot check the signature of {commit.hexsha}: {err.strip()}")
    return fields[0], fields[1], fields[2]


def _refusal(code: str, verification: SignatureVerification) -> Refusal:
    if code == "E":
        # gpg: the key is missing from the keyring, i.e. not trusted. ssh: the check itself
        # failed (unreadable allowed_signers, ssh-keygen missing).
        return Refusal.UNTRUSTED_KEY if verification.mode == "gpg" else Refusal.CANNOT_CHECK
    return _REFUSALS.get(code, Refusal.CANNOT_CHECK)
