"""Reports published to S3 and to directories: `patchctl report --to s3://bucket/prefix`, and the
loop's scheduled ComplianceReports, against two S3 servers.

- moto's server (``ThreadedMotoServer``) is an EMULATOR of S3, used because it is fast and lets
  every test start from an empty account (``POST /moto-api/reset``).
- OpenStack Swift with its s3api middleware (Debian packages, ``tests/swift.py``) is a REAL
  S3-compatible server: four Swift processes on loopback, with SigV4 checks of its own. The
  credential test runs against it, because moto accepts any key.

The AWS configuration of the host (``~/.aws``, instance metadata) is never read: every test gets
its own environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from reconciler.loop import Reconciler
from reconciler.plan import Settings
from reconciler.report.publish import PublishError, make_s3_client, publish
from reconciler.sources import DirectorySource
from reconciler.state import StateStore
from tests import awslab
from tests.swift import ACCESS_KEY, HAVE_SWIFT, SECRET_KEY, Swift, start_swift

T0 = datetime(2026, 11, 28, 10, tzinfo=UTC)
FORMATS = ("csv", "json", "html")
TYPES = {"csv": "text/csv", "json": "application/json", "html": "text/html"}
MOTO_KEYS = {"AWS_ACCESS_KEY_ID": "moto-key", "AWS_SECRET_ACCESS_KEY": "moto-secret"}


# --- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    with awslab.moto_server() as url:
        yield url


@pytest.fixture
def moto(moto_server: str) -> str:
    """moto's endpoint, emptied: no bucket from another test survives."""
    return awslab.moto_reset(moto_server)


@pytest.fixture(scope="session")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swift]:
    if not HAVE_SWIFT:
        pytest.skip("OpenStack Swift is not installed (apt-get install swift-proxy ...)")
    # Installed but not starting is a failure, not a skip: start_swift raises with the logs.
    server = start_swift(tmp_path_factory.mktemp("swift"))
    yield server
    server.stop()


def client(endpoint: str, key: str, secret: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment with no AWS configuration from the host: no ~/.aws, no instance role."""
    awslab.isolated_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return dict(os.environ)


# --- observed state ----------------------------------------------------------------------------


def evaluation(group: str, missing: int) -> dict[str, Any]:
    patches = [
        {
            "name": f"pkg{i}",
            "arch": "amd64",
            "version": "2",
            "installedVersion": "1",
            "state": "MISSING",
            "classification": "Security",
            "severity": "High",
            "complianceLevel": "HIGH",
            "cves": [f"CVE-2026-{i:04d}"],
            "reason": "approved by approvalRules[0]",
        }
        for i in range(missing)
    ]
    return {
        "patchGroup": group,
        "patches": patches,
        "summary": {
            "complianceStatus": "NON_COMPLIANT" if missing else "COMPLIANT",
            "complianceSeverity": "HIGH" if missing else None,
            "missingCount": missing,
            "installedCount": 0,
            "securityNonCompliantCount": missing,
        },
    }


def record_scans(store: StateStore, scans: dict[str, tuple[str, int]]) -> None:
    """One scan per instance, recorded through the store as the loop records them."""
    for minutes, (instance, (group, missing)) in enumerate(sorted(scans.items())):
        store.record_scan(
            instance=instance,
            operation="Scan",
            revision="main@sha1:aaa",
            baseline="debian-prod",
            baseline_hash="h",
            job_id=None,
            started_at=T0 + timedelta(minutes=minutes),
            finished_at=T0 + timedelta(minutes=minutes, seconds=5),
            inventory={"facts": {"operatingSystem": "DEBIAN", "hostname": instance}},
            evaluation=evaluation(group, missing),
        )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        record_scans(store, {"web-1": ("web", 2), "web-2": ("web", 0), "db-1": ("db", 1)})
    return path


def patchctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def normalized(name: str, content: bytes) -> tuple[str, bytes]:
    """A report file with the time it was generated replaced: two runs of `patchctl report` a
    second apart must otherwise be byte for byte the same."""
    stamp = re.search(r"\d{8}T\d{6}Z", name)
    assert stamp, name
    moment = datetime.strptime(stamp.group(), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    for text in (
        stamp.group(),
        moment.isoformat(timespec="seconds"),
        moment.strftime("%Y-%m-%d %H:%M UTC"),
    ):
        content = content.replace(text.encode(), b"<generated>")
    return name.replace(stamp.group(), "<stamp>"), content


def objects(s3: Any, bucket: str, prefix: str = "") -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


# --- patchctl report --to s3:// ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_lands_in_s3_as_in_a_directory(
    fmt: str, moto: str, state: Path, tmp_path: Path, aws_env: dict[str, str]
) -> None:
    env = {**aws_env, **MOTO_KEYS}
    s3 = client(moto, MOTO_KEYS["AWS_ACCESS_KEY_ID"], MOTO_KEYS["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket="compliance")
    to_s3 = patchctl(
        "report",
        "--state",
        str(state),
        "--format",
        fmt,
        "--to",
        "s3://compliance/fleet/daily",
        "--s3-endpoint-url",
        moto,
        env=env,
    )
    assert to_s3.returncode == 0, to_s3.stderr
    to_dir = patchctl(
        "report", "--state", str(state), "--format", fmt, "--to", str(tmp_path / "out"), env=env
    )
    assert to_dir.returncode == 0, to_dir.stderr

    landed = objects(s3, "compliance")
    assert to_s3.stdout.split() == [f"s3://compliance/{key}" for key in landed]
    assert all(key.startswith("fleet/daily/") and key.endswith(f".{fmt}") for key in landed)
    written = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert dict(normalized(k.rpartition("/")[2], v) for k, v in landed.items()) == dict(
        normalized(k, v) for k, v in written.items()
    )
    for key in landed:
        assert s3.head_object(Bucket="compliance", Key=key)["ContentType"] == TYPES[fmt]


def test_report_to_s3_names_only_what_it_wrote_for_one_instance(
    moto: str, state: Path, aws_env: dict[str, str]
) -> None:
    s3 = client(moto, "k", "s")
    s3.create_bucket(Bucket="compliance")
    run = patchctl(
        "report",
        "--state",
        str(state),
        "--instance",
        "web-1",
        "--to",
        "s3://compliance",
        "--s3-endpoint-url",
        moto,
        env={**aws_env, **MOTO_KEYS},
    )
    assert run.returncode == 0, run.stderr
    keys = sorted(objects(s3, "compliance"))
    assert [k.split("-2")[0] for k in keys] == ["compliance-detail-web-1", "compliance-summary"]
    assert sorted(run.stdout.split()) == [f"s3://compliance/{k}" for k in keys]
    detail = objects(s3, "compliance")[keys[0]].decode()
    assert "pkg0" in detail and "pkg1" in detail and "CVE-2026-0001" in detail


def test_endpoint_from_the_environment_with_a_host_name_uses_path_style(
    moto: str, state: Path, aws_env: dict[str, str]
) -> None:
    """AWS_ENDPOINT_URL_S3 is botocore's own setting; ``localhost`` (a name, not an address)
    would be addressed as ``compliance.localhost``, which does not resolve, without path style."""
    s3 = client(moto, "k", "s")
    s3.create_bucket(Bucket="compliance")
    env = {**aws_env, **MOTO_KEYS, "AWS_ENDPOINT_URL_S3": moto.replace("127.0.0.1", "localhost")}
    run = patchctl("report", "--state", str(state), "--to", "s3://compliance/env", env=env)
    assert run.returncode == 0, run.stderr
    assert [k.split("-2")[0] for k in objects(s3, "compliance")] == ["env/compliance-summary"]


def test_region_comes_from_aws_region_before_aws_default_region(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert make_s3_client().meta.region_name == "us-west-2"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    s3 = make_s3_client()
    assert s3.meta.region_name == "eu-central-1"
    # AWS's own endpoint keeps botocore's default (virtual-host) addressing.
    assert "amazonaws.com" in s3.meta.endpoint_url and not getattr(s3.meta.config, "s3", None)


def test_missing_bucket_is_one_clear_line_and_exit_1(
    moto: str, state: Path, aws_env: dict[str, str]
) -> None:
    run = patchctl(
        "report",
        "--state",
        str(state),
        "--to",
        "s3://no-such-bucket/reports",
        "--s3-endpoint-url",
        moto,
        env={**aws_env, **MOTO_KEYS},
    )
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr == (
        "patchctl: s3://no-such-bucket/reports: the bucket 'no-such-bucket' does not exist: "
        "create it, or fix the destination\n"
    )


def test_no_credentials_says_how_to_give_them(
    moto: str, state: Path, aws_env: dict[str, str]
) -> None:
    run = patchctl(
        "report", "--state", str(state), "--to", "s3://b/p", "--s3-endpoint-url", moto, env=aws_env
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("patchctl: s3://b/p: no usable AWS credentials")
    assert "AWS_ACCESS_KEY_ID" in run.stderr and run.stderr.count("\n") == 1


def test_endpoint_down_names_the_endpoint(state: Path, aws_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    run = patchctl(
        "report",
        "--state",
        str(state),
        "--to",
        "s3://b/p",
        "--s3-endpoint-url",
        dead,
        env={**aws_env, **MOTO_KEYS},
    )
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert f"patchctl: s3://b/p: cannot reach the S3 endpoint {dead}" in run.stderr


def test_a_malformed_endpoint_is_one_clear_line(state: Path, aws_env: dict[str, str]) -> None:
    run = patchctl(
        "report",
        "--state",
        str(state),
        "--to",
        "s3://b/p",
        "--s3-endpoint-url",
        "not-a-url",
        env={**aws_env, **MOTO_KEYS},
    )
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert run.stderr.startswith("patchctl: s3://b/p: Invalid endpoint: not-a-url")
    assert "internal error" not in run.stderr


def test_a_directory_failure_half_way_leaves_no_file_behind(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "b.csv").mkdir(parents=True)  # a directory where the second file should go
    (out / "b.csv" / "keep").write_text("x")
    with pytest.raises(PublishError, match=r"b.csv is already there"):
        publish({"a.csv": b"1\n", "b.csv": b"2\n"}, str(out))
    assert sorted(p.name for p in out.iterdir()) == ["b.csv"]  # no a.csv, no temporary file


def test_a_published_report_is_never_overwritten_nor_removed_by_a_later_one(
    tmp_path: Path,
) -> None:
    """The same names in the same second: the first report stays exactly as published, and the
    second one, refused, leaves nothing of itself behind."""
    out = tmp_path / "out"
    publish({"summary.csv": b"first\n"}, str(out))
    with pytest.raises(PublishError, match=r"summary.csv is already there.*never overwritten"):
        publish({"detail.csv": b"second\n", "summary.csv": b"second\n"}, str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"summary.csv": b"first\n"}


def test_a_directory_is_created_and_written_whole(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "reports"
    written = publish({"a.csv": b"1\n", "b.json": b"{}\n"}, str(out))
    assert written == [str(out / "a.csv"), str(out / "b.json")]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"a.csv": b"1\n", "b.json": b"{}\n"}


def test_an_unwritable_directory_is_a_clear_error(state: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    run = patchctl(
        "report",
        "--state",
        str(state),
        "--to",
        str(tmp_path / "file" / "sub"),
        env=dict(os.environ),
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"patchctl: {tmp_path / 'file' / 'sub'}: cannot create")


# --- Swift: a real S3 API ----------------------------------------------------------------------


def swift_env(aws_env: dict[str, str], secret: str = SECRET_KEY) -> dict[str, str]:
    return {**aws_env, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret}


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_lands_in_swift(
    fmt: str, swift: Swift, state: Path, tmp_path: Path, aws_env: dict[str, str]
) -> None:
    s3 = client(swift.endpoint, ACCESS_KEY, SECRET_KEY)
    bucket = f"reports-{fmt}"
    s3.create_bucket(Bucket=bucket)
    env = swift_env(aws_env)
    to_s3 = patchctl(
        "report",
        "--state",
        str(state),
        "--format",
        fmt,
        "--to",
        f"s3://{bucket}/weekly",
        "--s3-endpoint-url",
        swift.endpoint,
        env=env,
    )
    assert to_s3.returncode == 0, to_s3.stderr
    to_dir = patchctl(
        "report", "--state", str(state), "--format", fmt, "--to", str(tmp_path / "out"), env=env
    )
    assert to_dir.returncode == 0, to_dir.stderr
    landed = objects(s3, bucket, "weekly/")
    assert to_s3.stdout.split() == [f"s3://{bucket}/{key}" for key in landed]
    written = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert dict(normalized(k.rpartition("/")[2], v) for k, v in landed.items()) == dict(
        normalized(k, v) for k, v in written.items()
    )
    for key in landed:
        assert s3.head_object(Bucket=bucket, Key=key)["ContentType"] == TYPES[fmt]


def test_a_failure_half_way_leaves_no_object_behind(swift: Swift) -> None:
    """Swift refuses an object name over 1024 bytes (moto does not): the object uploaded before
    it is deleted again, and nothing is claimed as published."""
    s3 = client(swift.endpoint, ACCESS_KEY, SECRET_KEY)
    s3.create_bucket(Bucket="halfway")
    files = {"a-summary.csv": b"first\n", "b" * 1100 + ".csv": b"second\n"}
    with pytest.raises(PublishError, match=r"^s3://halfway/r: S3 refused the upload: "):
        publish(files, "s3://halfway/r", s3_client=s3)
    assert objects(s3, "halfway") == {}


def test_swift_refuses_a_wrong_secret_with_a_clear_error(
    swift: Swift, state: Path, aws_env: dict[str, str]
) -> None:
    client(swift.endpoint, ACCESS_KEY, SECRET_KEY).create_bucket(Bucket="guarded")
    run = patchctl(
        "report",
        "--state",
        str(state),
        "--to",
        "s3://guarded/p",
        "--s3-endpoint-url",
        swift.endpoint,
        env=swift_env(aws_env, secret="wrong"),
    )
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert run.stderr.startswith(
        "patchctl: s3://guarded/p: the credentials were refused (SignatureDoesNotMatch)"
    )
    assert objects(client(swift.endpoint, ACCESS_KEY, SECRET_KEY), "guarded") == {}


def test_swift_missing_bucket_is_a_clear_error(
    swift: Swift, state: Path, aws_env: dict[str, str]
) -> None:
    run = patchctl(
        "report",
        "--state",
        str(state),
        "--to",
        "s3://never-created/p",
        "--s3-endpoint-url",
        swift.endpoint,
        env=swift_env(aws_env),
    )
    assert run.returncode == 1
    assert run.stderr == (
        "patchctl: s3://never-created/p: the bucket 'never-created' does not exist: "
        "create it, or fix the destination\n"
    )


# --- the loop's scheduled reports to S3 ------------------------------------------------------------

FLEET = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: web}
spec: {}
---
apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata: {name: web-1, labels: {patchwarden.io/patch-group: web}}
spec: {connection: {type: local, root: /nonexistent/web-1}}
---
apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata: {name: db-1}
spec: {connection: {type: local, root: /nonexistent/db-1}}
---
apiVersion: patchwarden.io/v1alpha1
kind: ComplianceReport
metadata: {name: nightly}
spec:
  schedule: cron(0 2 * * ? *)
  destination: s3://compliance/nightly
  format: json
  scope: {patchGroups: [web]}
"""


@pytest.mark.parametrize("server", ["moto", "swift"])
def test_the_loop_exports_a_scheduled_report_to_s3_once_per_opening(
    server: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    aws_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if server == "moto":
        endpoint, key, secret = request.getfixturevalue("moto"), "k", "s"
    else:
        endpoint, key, secret = request.getfixturevalue("swift").endpoint, ACCESS_KEY, SECRET_KEY
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    s3 = client(endpoint, key, secret)
    s3.create_bucket(Bucket="compliance")
    for old in objects(s3, "compliance"):
        s3.delete_object(Bucket="compliance", Key=old)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "fleet.yaml").write_text(FLEET)
    now = [datetime(2026, 11, 28, 2, 30, tzinfo=UTC)]
    with StateStore(tmp_path / "state.db") as store:
        record_scans(store, {"web-1": ("web", 2), "db-1": ("", 1)})
        loop = Reconciler(
            DirectorySource(tmp_path / "config"),
            store,
            lambda i: pytest.fail("no job may run"),
            settings=Settings(stale_after=timedelta(days=365)),
            clock=lambda: now[0],
            s3_endpoint_url=endpoint,
        )
        loop.refresh()
        loop.export_reports()
        loop.export_reports()  # the first may still run: not started again, nor due after it
        assert loop.wait_for_exports(60)
        landed = objects(s3, "compliance")
        assert [k.split("-2")[0] for k in landed] == ["nightly/nightly-compliance-report"]
        document = json.loads(next(iter(landed.values())))
        assert [i["instanceId"] for i in document["instances"]] == ["web-1"]
        (run,) = store.report_runs("nightly")
        assert (run.status, run.opening, run.locations) == (
            "SUCCESS",
            "2026-11-28T02:00:00Z",
            tuple(f"s3://compliance/{k}" for k in landed),
        )


def test_patchctl_reconcile_exports_a_due_report_to_s3(
    moto: str, tmp_path: Path, aws_env: dict[str, str]
) -> None:
    """The loop as a process: `--s3-endpoint-url` reaches the scheduled export; a second run in
    the same period exports nothing more."""
    s3 = client(moto, "k", "s")
    s3.create_bucket(Bucket="compliance")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "report.yaml").write_text(
        "apiVersion: patchwarden.io/v1alpha1\nkind: ComplianceReport\n"
        "metadata: {name: fleet}\n"
        "spec: {schedule: rate(1 day), destination: s3://compliance/fleet, format: html}\n"
    )
    args = ["reconcile", "--source", str(tmp_path / "config"), "--state", str(tmp_path / "db")]
    env = {**aws_env, **MOTO_KEYS}
    runs = [patchctl(*args, "--s3-endpoint-url", moto, "-o", "json", env=env) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr + runs[1].stderr
    assert ['"report exported"' in r.stderr for r in runs] == [True, False]
    (key,) = objects(s3, "compliance")
    assert key.startswith("fleet/fleet-compliance-dashboard-") and key.endswith(".html")
