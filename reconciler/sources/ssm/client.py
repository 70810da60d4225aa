"""Stage: sources (SSM import and export), the I/O part. Reads an account's custom patch
baselines, patch-group registrations and maintenance windows through boto3 (Describe*/Get*), or
from the JSON the AWS CLI saved, into an :class:`SsmAccount` for :func:`convert`; and sends what
:mod:`.outbound` made of a snapshot, creating what SSM lacks and replacing what it has by name,
only with ``apply`` (a dry run makes read calls only).

Credentials come from boto3's standard chain (environment, shared files, ``--profile``, roles),
never from the repository; the endpoint is AWS's unless the AWS configuration names another
(``AWS_ENDPOINT_URL_SSM``, ``AWS_ENDPOINT_URL``). Writes nothing here; decides nothing about
what the resources mean (that is :mod:`.convert` and :mod:`.outbound`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.aws import credentials_problem
from reconciler.errors import RefusedInput
from reconciler.sources.ssm.convert import SsmAccount, SsmWindow
from reconciler.sources.ssm.outbound import Outbound, SsmWindowRequests


class SsmReadFailed(RefusedInput):
    """SSM could not be read or written (credentials, endpoint, permissions, a request its API
    refuses), or a saved file is not one of the responses we read; the message says which and
    what to do, in one line."""


def read_account(region: str | None, profile: str | None, *, timeout: float = 10.0) -> SsmAccount:
    """Everything :func:`convert` needs, read through the SSM API."""
    with _aws_errors("cannot read SSM"):
        return _read(ssm_client(region, profile, timeout=timeout))


@contextmanager
def _aws_errors(doing: str) -> Iterator[None]:
    """botocore's errors as one line starting with ``doing``, saying what to do."""
    from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

    try:
        yield
    except NoRegionError:
        raise SsmReadFailed(
            f"{doing}: no AWS region: give --region, or set AWS_REGION or a profile's region"
        ) from None
    except (BotoCoreError, ClientError, ValueError) as exc:
        raise SsmReadFailed(f"{doing}: {credentials_problem(exc) or exc}") from None


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


# -- export ------------------------------------------------------------------------------------


def export_account(
    outbound: Outbound, region: str | None, profile: str | None, *, apply: bool
) -> list[str]:
    """What exporting ``outbound`` does in the account, one line per object; done when
    ``apply``, else only read calls are made (a dry run)."""
    with _aws_errors("cannot export to SSM"):
        return _Export(ssm_client(region, profile), apply).run(outbound)


def _check(client: Any, outbound: Outbound) -> None:
    """Every create request checked against SSM's API model before the first write, so a
    request SSM's client would refuse cannot leave the account half exported."""
    from botocore.validate import ParamValidator

    model = client.meta.service_model
    requests: list[tuple[str, dict[str, Any]]] = [
        ("CreatePatchBaseline", b) for b in outbound.baselines
    ]
    for window in outbound.windows:
        requests.append(("CreateMaintenanceWindow", window.window))
        requests.extend(
            ("RegisterTargetWithMaintenanceWindow", {"WindowId": "mw-0123456789abcdef0", **t})
            for t in window.targets
        )
        requests.extend(
            ("RegisterTaskWithMaintenanceWindow", {"WindowId": "mw-0123456789abcdef0", **t})
            for t in window.tasks
        )
    for operation, params in requests:
        report = ParamValidator().validate(params, model.operation_model(operation).input_shape)
        if report.has_errors():
            raise ValueError(f"{operation} {params.get('Name')}: {report.generate_report()}")


class _Export:
    """Creates what SSM lacks and replaces what it has, matched by name."""

    def __init__(self, client: Any, apply: bool) -> None:
        self.client, self.apply, self.lines = client, apply, list[str]()
        self.baselines = self._named(
            "describe_patch_baselines",
            "BaselineIdentities",
            "BaselineName",
            "BaselineId",
            Filters=[{"Key": "OWNER", "Values": ["Self"]}],
        )
        self.windows = self._named(
            "describe_maintenance_windows", "WindowIdentities", "Name", "WindowId"
        )

    def _named(
        self, operation: str, key: str, name: str, ident: str, **kwargs: Any
    ) -> dict[str, str]:
        return {item[name]: item[ident] for item in _pages(self.client, operation, key, **kwargs)}

    def run(self, outbound: Outbound) -> list[str]:
        _check(self.client, outbound)
        for request in outbound.baselines:
            self._baseline(request)
        for group, baseline, system in outbound.registrations:
            self._registration(group, baseline, system)
        for window in outbound.windows:
            self._window(window)
        return self.lines

    def _baseline(self, request: dict[str, Any]) -> None:
        name = request["Name"]
        known = self.baselines.get(name)
        self.lines.append(f"{'update' if known else 'create'} patch baseline {name}")
        if self.apply and known:
            # The operating system of a baseline cannot change in SSM; the rest is replaced.
            fields = {k: v for k, v in request.items() if k != "OperatingSystem"}
            self.client.update_patch_baseline(BaselineId=known, Replace=True, **fields)
        elif self.apply:
            self.baselines[name] = self.client.create_patch_baseline(**request)["BaselineId"]

    def _registration(self, group: str, baseline: str, system: str) -> None:
        from botocore.exceptions import ClientError

        ident = self.baselines.get(baseline) or self._predefined(baseline)
        # Without a registration SSM answers with the account's default for the OS.
        current = self.client.get_patch_baseline_for_patch_group(
            PatchGroup=group, OperatingSystem=system
        ).get("BaselineId")
        if current == ident:
            return
        self.lines.append(f"register patch group {group} with {baseline} for {system}")
        if not self.apply:
            return
        try:
            self.client.register_patch_baseline_for_patch_group(BaselineId=ident, PatchGroup=group)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "AlreadyExistsException":
                raise
            # One baseline per operating system and group: the registered one makes way.
            self.client.deregister_patch_baseline_for_patch_group(
                BaselineId=current, PatchGroup=group
            )
            self.client.register_patch_baseline_for_patch_group(BaselineId=ident, PatchGroup=group)

    def _predefined(self, name: str) -> str:
        found = self._named(
            "describe_patch_baselines",
            "BaselineIdentities",
            "BaselineName",
            "BaselineId",
            Filters=[{"Key": "NAME_PREFIX", "Values": [name]}],
        )
        return found.get(name, name)

    def _window(self, window: SsmWindowRequests) -> None:
        name = window.window["Name"]
        known = self.windows.get(name)
        self.lines.append(
            f"{'update' if known else 'create'} maintenance window {name}: "
            f"{len(window.targets)} target(s), {len(window.tasks)} AWS-RunPatchBaseline task(s)"
        )
        if not self.apply:
            return
        if known:
            self.client.update_maintenance_window(
                WindowId=known, Replace=True, Enabled=window.enabled, **window.window
            )
            self._clear(known)
        else:
            known = self.client.create_maintenance_window(**window.window)["WindowId"]
            if not window.enabled:
                self.client.update_maintenance_window(WindowId=known, Enabled=False)
        targets = [
            self.client.register_target_with_maintenance_window(WindowId=known, **target)[
                "WindowTargetId"
            ]
            for target in window.targets
        ]
        for task in window.tasks:
            placed = {**task, "Targets": [{"Key": "WindowTargetIds", "Values": targets}]}
            self.client.register_task_with_maintenance_window(WindowId=known, **placed)

    def _clear(self, window: str) -> None:
        """The window's tasks and targets go before ours are registered: ours replace them."""
        for task in _pages(
            self.client, "describe_maintenance_window_tasks", "Tasks", WindowId=window
        ):
            self.client.deregister_task_from_maintenance_window(
                WindowId=window, WindowTaskId=task["WindowTaskId"]
            )
        for target in _pages(
            self.client, "describe_maintenance_window_targets", "Targets", WindowId=window
        ):
            self.client.deregister_target_from_maintenance_window(
                WindowId=window, WindowTargetId=target["WindowTargetId"]
            )
