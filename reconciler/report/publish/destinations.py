"""Stage: report — publishing. Publishing report files: to a directory, or to S3
(``s3://bucket/prefix``).

An I/O edge, like ``state`` for its file: it writes the files it is given where it is told and
decides nothing about their content. All or nothing: a destination holds every file of a report
or none of them, and only what was really written is returned. A directory gets each file under
a temporary name first and renamed into place once all are written. S3 has no multi-object
transaction: objects already uploaded are deleted again when a later one fails (and the error
says so when even that fails).

S3 is reached with boto3 the standard AWS ways: credentials from the usual chain (environment,
shared files, ``AWS_PROFILE``, container and instance roles); the region from ``AWS_REGION``, else
``AWS_DEFAULT_REGION`` or the profile; the endpoint from ``endpoint_url`` (``--s3-endpoint-url``),
else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` or the profile's ``endpoint_url``, which
botocore itself reads. Any endpoint other than AWS's own gets path-style addressing
(``http://host/bucket/key``): S3-compatible servers such as Swift's s3api need it. Every failure
is a :class:`PublishError`, one line naming the destination and what to do.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.aws import credentials_problem
from reconciler.errors import TemporaryError
from reconciler.paths import OutsideDirectory, confine
from reconciler.report.files import sync_directory

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CONTENT_TYPES = {".csv": "text/csv", ".json": "application/json", ".html": "text/html"}
"""Content type per file extension; anything else is application/octet-stream."""
_AWS_HOSTS = re.compile(r"^https?://([^/]*\.)?amazonaws\.com(\.cn)?(:\d+)?(/|$)")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class PublishError(TemporaryError):
    """A report could not be published; the message names the destination and what to do."""


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix``: objects are written as ``prefix/name`` (``name`` at the top when
    there is no prefix)."""

    bucket: str
    prefix: str

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"


def s3_location(destination: str) -> S3Location | None:
    """The bucket and prefix of an ``s3://`` destination; None for a directory."""
    if not destination.startswith("s3://"):
        return None
    bucket, _, prefix = destination[len("s3://") :].partition("/")
    if not bucket:
        raise PublishError(f"{destination}: an S3 destination is s3://bucket[/prefix]")
    return S3Location(bucket, prefix.strip("/"))


def publish(
    files: Mapping[str, bytes],
    destination: str,
    *,
    s3_client: S3Client | None = None,
    endpoint_url: str | None = None,
    report_dir: Path | None = None,
) -> list[str]:
    """Write ``files`` (name → content) to ``destination``, a directory or ``s3://bucket/prefix``;
    returns where each file was written (paths, or ``s3://`` URLs), in the order given.

    ``s3_client`` is used as given; otherwise one is made with :func:`make_s3_client`
    (``endpoint_url`` overrides the configured endpoint). ``report_dir``, given for destinations
    a resource names, is the directory a directory destination must be in (a relative one is
    read inside it); one outside is refused and nothing is written.
    """
    for name in files:
        if not _FILE_NAME.fullmatch(name) or name.startswith("."):
            raise PublishError(f"{destination}: {name!r} is not a plain file name")
    if "://" in destination and not destination.startswith("s3://"):
        raise PublishError(f"{destination}: give a directory or s3://bucket[/prefix]")
    location = s3_location(destination)
    if location is None:
        return _to_directory(files, _directory(destination, report_dir))
    if s3_client is not None:
        client = s3_client
    else:
        try:
            client = make_s3_client(endpoint_url=endpoint_url)
        except ValueError as exc:  # botocore: "Invalid endpoint: ..."
            raise PublishError(
                f"{destination}: {exc}: give the S3 endpoint as http(s)://host[:port] "
                "(--s3-endpoint-url, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)"
            ) from None
    return _to_s3(files, location, client, destination)


# -- directories ----------------------------------------------------------------------------------


def _directory(destination: str, report_dir: Path | None) -> Path:
    if report_dir is None:
        return Path(destination)
    try:
        return confine(destination, report_dir)
    except OutsideDirectory:
        raise PublishError(
            f"spec.destination {destination} is outside the report directory {report_dir}: "
            "give a directory inside it (a relative name is written there), or start patchctl "
            "with --report-dir naming a directory that holds it"
        ) from None


def _to_directory(files: Mapping[str, bytes], directory: Path) -> list[str]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PublishError(
            f"{directory}: cannot create the report directory ({exc.strerror or exc}): "
            "choose a directory this user may write"
        ) from None
    staged: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for name, content in files.items():
            staged.append((_stage(directory, name, content), directory / name))
        for temporary, final in staged:
            _place(temporary, final)
            placed.append(final)
        sync_directory(directory)
    except FileExistsError as exc:
        for path in [*placed, *(t for t, _ in staged)]:
            path.unlink(missing_ok=True)
        raise PublishError(
            f"{directory}: {Path(exc.filename or '').name} is already there and reports are never "
            "overwritten: publish again in a moment (names carry the time to the second)"
        ) from None
    except OSError as exc:
        # Nothing half-published: the files renamed so far go again, with the temporary ones.
        for path in [*placed, *(t for t, _ in staged)]:
            path.unlink(missing_ok=True)
        raise PublishError(
            f"{directory}: writing the report failed ({exc.strerror or exc}): "
            "check the space and permissions there; nothing was published"
        ) from None
    return [str(path) for path in placed]


def _place(temporary: Path, final: Path) -> None:
    """Give ``temporary`` its final name, never replacing a file: a report already published
    (the same name in the same second) stays as it was, and a rollback only removes what this
    call made."""
    try:
        os.link(temporary, final)
    except OSError as exc:
        if isinstance(exc, FileExistsError) or final.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(final)) from None
        os.replace(temporary, final)  # no hard links on this filesystem (some network, FAT)
        return
    temporary.unlink()


def _stage(directory: Path, name: str, content: bytes) -> Path:
    """``content`` in a new hidden file beside its final name, flushed to disk."""
    temporary = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    # 0666 less the umask, as a plain open() would give: reports are meant to be read.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


# -- S3 -------------------------------------------------------------------------------------------


def make_s3_client(*, endpoint_url: str | None = None, timeout: float = 10.0) -> S3Client:
    """An S3 client from the standard AWS configuration (see the module docstring).

    botocore reads ``AWS_DEFAULT_REGION`` but not ``AWS_REGION``, which the AWS CLI v2 and the
    other SDKs honour first; it is passed on here so both work."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None)
    retries: Any = {"mode": "standard", "max_attempts": 3}
    config = Config(connect_timeout=timeout, read_timeout=3 * timeout, retries=retries)
    client = session.client("s3", endpoint_url=endpoint_url, config=config)
    if _AWS_HOSTS.match(client.meta.endpoint_url):
        return client
    # An endpoint of its own (argument, environment or profile): path-style addressing.
    path_style = config.merge(Config(s3={"addressing_style": "path"}))
    return session.client("s3", endpoint_url=endpoint_url, config=path_style)


def _to_s3(
    files: Mapping[str, bytes], location: S3Location, client: S3Client, destination: str
) -> list[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    written: list[str] = []
    try:
        for name, content in files.items():
            client.put_object(
                Bucket=location.bucket,
                Key=location.key(name),
                Body=content,
                ContentType=CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream"),
            )
            written.append(name)
    except (BotoCoreError, ClientError) as exc:
        leftover = _withdraw(client, location, written)
        message = _s3_problem(exc, location, client.meta.endpoint_url)
        if leftover:
            message += f"; could not delete the objects already written: {', '.join(leftover)}"
        raise PublishError(f"{destination}: {message}") from None
    return [location.url(name) for name in written]


def _withdraw(client: S3Client, location: S3Location, names: list[str]) -> list[str]:
    """Delete the objects of a report that failed half-way; returns those still there."""
    from botocore.exceptions import BotoCoreError, ClientError

    leftover = []
    for name in names:
        try:
            client.delete_object(Bucket=location.bucket, Key=location.key(name))
        except (BotoCoreError, ClientError):
            leftover.append(location.url(name))
    return leftover


def _s3_problem(exc: Exception, location: S3Location, endpoint: str) -> str:
    """What went wrong, and what to do about it, in one line."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        ParamValidationError,
    )

    missing = credentials_problem(exc)
    if missing is not None:
        return missing
    if isinstance(exc, EndpointConnectionError):
        return (
            f"cannot reach the S3 endpoint {endpoint}: check that it is up, and "
            "--s3-endpoint-url / AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL"
        )
    if isinstance(exc, ParamValidationError):
        return f"S3 refused the request before sending it: {_one_line(str(exc))}"
    if not isinstance(exc, ClientError):
        return f"S3 request failed: {_one_line(str(exc))} (endpoint {endpoint})"
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    text = _one_line(str(error.get("Message") or exc))
    if code in ("NoSuchBucket", "404"):
        return f"the bucket {location.bucket!r} does not exist: create it, or fix the destination"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return (
            f"the credentials were refused ({code}): check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for this endpoint"
        )
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        target = (
            f"arn:aws:s3:::{location.bucket}/{location.prefix + '/' if location.prefix else ''}*"
        )
        return f"access denied ({text}): the credentials need s3:PutObject on {target}"
    return f"S3 refused the upload: {code}: {text}"


def _one_line(text: str) -> str:
    return " ".join(text.split())
