"""Stage: sources (SSM import), the I/O part. Reads an account's custom patch baselines, patch-group
registrations and maintenance windows through boto3 (read-only calls: Describe*/Get*), or from the
JSON the AWS CLI saved, into an :class:`SsmAccount` for :func:`convert`.

Credentials come from boto3's standard chain (environment, shared files, ``--profile``, roles),
never from the repository; the endpoint is AWS's unless the AWS configuration names another
(``AWS_ENDPOINT_URL_SSM``, ``AWS_ENDPOINT_URL``). Writes nothing, in AWS or here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from reconciler.aws import credentials_problem
from reconciler.errors import RefusedInput
from reconciler.sources.ssm.convert import SsmAccount, SsmWindow


class SsmReadFailed(RefusedInput):
    """SSM could not be read (credentials, endpoint, permissions), or a saved file is not one of
    the responses we read; the message says which and what to do, in one line."""


def read_account(region: str | None, profile: str | None, *, timeout: float = 10.0) -> SsmAccount:
    """Everything :func:`convert` needs, read through the SSM API."""
    from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

    try:
        client = ssm_client(region, profile, timeout=timeout)
        return _read(client)
    except NoRegionError:
        raise SsmReadFailed(
            "cannot read SSM: no AWS region: give --region, or set AWS_REGION or a profile's region"
        ) from None
    except (BotoCoreError, ClientError, ValueError) as exc:
        missing = credentials_problem(exc)
        raise SsmReadFailed(f"cannot read SSM: {missing or exc}") from None


def ssm_client(region: str | None, profile: str | None, *, timeout: float = 10.0) -> Any:
    """An SSM client from the standard AWS configuration (``profile``: a named profile)."""
    import boto3
    from botocore.config import Config

    retries: Any = {"mode": "standard", "max_attempts": 3}
    config = Config(connect_timeout=timeout, read_timeout=3 * timeout, retries=retries)
    session = boto3.session.Session(profile_name=profile, region_name=region)
    return session.client("ssm", config=config)


def _pages(client: Any, operation: str, key: str, **kwargs: Any) -> Iterator[Mapping[str, Any]]:
    for page in client.get_paginator(operation).paginate(**kwargs):
        yield from page.get(key, [])


def _read(client: Any) -> SsmAccount:
    custom = {"Key": "OWNER", "Values": ["Self"]}
    ids = [
        b["BaselineId"]
        for b in _pages(client, "describe_patch_baselines", "BaselineIdentities", Filters=[custom])
    ]
    baselines = [client.get_patch_baseline(BaselineId=i) for i in ids]
    groups = list(_pages(client, "describe_patch_groups", "Mappings"))
    windows = [
        _window(client, w["WindowId"])
        for w in _pages(client, "describe_maintenance_windows", "WindowIdentities")
    ]
    return SsmAccount(tuple(baselines), tuple(groups), tuple(windows))


def _window(client: Any, window_id: str) -> SsmWindow:
    window = client.get_maintenance_window(WindowId=window_id)
    targets = list(
        _pages(client, "describe_maintenance_window_targets", "Targets", WindowId=window_id)
    )
    described = _pages(client, "describe_maintenance_window_tasks", "Tasks", WindowId=window_id)
    # DescribeMaintenanceWindowTasks leaves out the Run Command parameters (Operation,
    # RebootOption): GetMaintenanceWindowTask has them.
    tasks = [
        {
            **task,
            **client.get_maintenance_window_task(
                WindowId=window_id, WindowTaskId=task["WindowTaskId"]
            ),
        }
        for task in described
    ]
    return SsmWindow(window, tuple(targets), tuple(tasks))


# -- saved files -------------------------------------------------------------------------------

SAVED_WITH = (
    "aws ssm get-patch-baseline, describe-patch-groups, get-maintenance-window, "
    "describe-maintenance-window-targets, describe-maintenance-window-tasks or "
    "get-maintenance-window-task"
)


def read_files(directory: Path) -> SsmAccount:
    """The responses saved as ``*.json`` in ``directory`` (each file one response, recognised by
    its shape; targets and tasks join their window by WindowId)."""
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        raise SsmReadFailed(f"{directory}: no *.json files; save them with {SAVED_WITH}")
    baselines: list[Mapping[str, Any]] = []
    groups: list[Mapping[str, Any]] = []
    windows: dict[str, dict[str, Any]] = {}
    parts: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for path in files:
        data = _json(path)
        if "BaselineId" in data and "OperatingSystem" in data:
            baselines.append(data)
        elif "Mappings" in data:
            groups.extend(data["Mappings"])
        elif "WindowId" in data and "Schedule" in data:
            windows[data["WindowId"]] = data
        elif "WindowTaskId" in data:
            _joined(parts, "tasks", [data])
        elif isinstance(data.get("Targets"), list) or isinstance(data.get("Tasks"), list):
            _joined(parts, "targets", data.get("Targets", []))
            _joined(parts, "tasks", data.get("Tasks", []))
        else:
            raise SsmReadFailed(
                f"{path}: not a response this import reads; save it with {SAVED_WITH}"
            )
    return SsmAccount(tuple(baselines), tuple(groups), _windows(windows, parts))


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SsmReadFailed(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise SsmReadFailed(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise SsmReadFailed(f"{path}: not a response this import reads; save it with {SAVED_WITH}")
    return data


def _joined(
    parts: dict[str, dict[str, list[Mapping[str, Any]]]], what: str, items: list[Mapping[str, Any]]
) -> None:
    for item in items:
        per_window = parts.setdefault(str(item.get("WindowId", "")), {})
        found = per_window.setdefault(what, [])
        # A task saved by both describe-... and get-maintenance-window-task: one task, merged.
        same = [
            i
            for i, old in enumerate(found)
            if what == "tasks" and old.get("WindowTaskId") == item.get("WindowTaskId")
        ]
        if same:
            found[same[0]] = {**found[same[0]], **item}
        else:
            found.append(item)


def _windows(
    windows: Mapping[str, Mapping[str, Any]], parts: Mapping[str, Mapping[str, list[Any]]]
) -> tuple[SsmWindow, ...]:
    orphans = sorted(set(parts) - set(windows))
    if orphans:
        raise SsmReadFailed(
            f"targets or tasks of window {orphans[0]} but no get-maintenance-window file for it: "
            f"save it with aws ssm get-maintenance-window --window-id {orphans[0]}"
        )
    return tuple(
        SsmWindow(
            window,
            tuple(parts.get(wid, {}).get("targets", [])),
            tuple(parts.get(wid, {}).get("tasks", [])),
        )
        for wid, window in windows.items()
    )
