"""SSM for tests: the recorded responses of ``tests/ssmdata/account`` (written by hand in the
documented AWS response shapes, see its README) served over HTTP on loopback as SSM's JSON API
(``X-Amz-Target: AmazonSSM.<Operation>``), so boto3 reaches them as it reaches AWS: endpoint from
``AWS_ENDPOINT_URL_SSM``, SigV4, botocore's response parsing against the service model.

Not an emulator: it answers the read calls ``patchctl import ssm`` makes from the files, records
every request, and answers anything else with an error. moto's server (tests/awslab.py) does not
implement GetPatchBaseline, DescribePatchGroups nor GetMaintenanceWindowTask, hence this.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ACCOUNT = Path(__file__).resolve().parent / "ssmdata" / "account"


@dataclass
class RecordedSsm:
    url: str
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    denied: set[str] = field(default_factory=set)
    """Operations answered with AccessDeniedException."""


def _files() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(ACCOUNT.glob("*.json"))]


def answer(operation: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded response to ``operation`` with ``body``; None when there is none."""
    files = _files()
    baselines = [f for f in files if "BaselineId" in f and "OperatingSystem" in f]
    windows = [f for f in files if "WindowId" in f and "Schedule" in f]
    if operation == "DescribePatchBaselines":
        keys = ("BaselineId", "BaselineName", "OperatingSystem", "BaselineDescription")
        named = [
            {**b, "BaselineName": b["Name"], "BaselineDescription": b["Description"]}
            for b in baselines
        ]
        return {
            "BaselineIdentities": [
                {k: b[k] for k in keys} | {"DefaultBaseline": False} for b in named
            ]
        }
    if operation == "GetPatchBaseline":
        return next((b for b in baselines if b["BaselineId"] == body["BaselineId"]), None)
    if operation == "DescribeMaintenanceWindows":
        keys = ("WindowId", "Name", "Description", "Enabled", "Duration", "Cutoff", "Schedule")
        return {"WindowIdentities": [{k: w[k] for k in keys} for w in windows]}
    if operation == "GetMaintenanceWindow":
        return next((w for w in windows if w["WindowId"] == body["WindowId"]), None)
    by_key = {"DescribePatchGroups": "Mappings", "DescribeMaintenanceWindowTargets": "Targets"}
    by_key["DescribeMaintenanceWindowTasks"] = "Tasks"
    if operation in by_key:
        return next((f for f in files if by_key[operation] in f), None)
    if operation == "GetMaintenanceWindowTask":
        return next((f for f in files if f.get("WindowTaskId") == body["WindowTaskId"]), None)
    return None


@contextmanager
def recorded_ssm() -> Iterator[RecordedSsm]:
    """The server on a free loopback port."""
    lab = RecordedSsm("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            operation = self.headers.get("X-Amz-Target", "").removeprefix("AmazonSSM.")
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            lab.requests.append((operation, body))
            found = None if operation in lab.denied else answer(operation, body)
            status, data = (200, found) if found is not None else (400, _error(operation, lab))
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    lab.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield lab
    finally:
        server.shutdown()
        server.server_close()


def _error(operation: str, lab: RecordedSsm) -> dict[str, str]:
    if operation in lab.denied:
        return {
            "__type": "AccessDeniedException",
            "message": f"User: arn:aws:iam::111122223333:user/ci is not authorized to perform: ssm:{operation}",
        }
    return {"__type": "ValidationException", "message": f"no recorded response for {operation}"}
