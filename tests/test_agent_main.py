"""The agent program itself (``python -m reconciler.agent``): which backend a root gets, and how a
failure to load one is reported. Only an os-release file is needed: no package manager runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _root(path: Path, os_release: str) -> Path:
    (path / "etc").mkdir(parents=True)
    (path / "etc/os-release").write_text(os_release)
    return path


def _agent(root: Path, python_path: Path | None = None) -> tuple[int, dict[str, Any], str]:
    env = dict(os.environ)
    if python_path is not None:
        env["PYTHONPATH"] = str(python_path)
    run = subprocess.run(
        [sys.executable, "-m", "reconciler.agent", "scan", "--no-refresh", "--root", str(root)],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )  # fmt: skip
    return run.returncode, json.loads(run.stdout), run.stderr


def test_a_backend_that_cannot_be_loaded_is_an_internal_error_naming_the_module(
    tmp_path: Path,
) -> None:
    """A Python built without liblzma has an ``lzma`` module whose ``_lzma`` is missing: the
    rpm backend then fails to import. That is the agent's problem on this machine, not an
    operating system it does not support, and the error says which module is missing."""
    root = _root(tmp_path / "rhel", 'ID="rhel"\nVERSION_ID="9.4"\n')
    no_lzma = tmp_path / "python-without-lzma"
    no_lzma.mkdir()
    (no_lzma / "_lzma.py").write_text(
        "raise ModuleNotFoundError(\"No module named '_lzma'\", name='_lzma')\n"
    )
    rc, document, stderr = _agent(root, python_path=no_lzma)
    error = document["error"]
    assert rc == 1 and "Traceback" not in stderr
    assert error["code"] == "InternalError"
    assert "_lzma" in error["message"] and "not supported" not in error["message"]
    assert error["details"] == {"backend": "reconciler.agent.rpm", "module": "_lzma"}


def test_an_operating_system_without_a_backend_is_unsupported(tmp_path: Path) -> None:
    root = _root(tmp_path / "gentoo", 'ID="gentoo"\n')
    rc, document, _ = _agent(root)
    assert rc == 1
    assert document["error"]["code"] == "UnsupportedSystem"
    assert "gentoo" in document["error"]["message"]


def test_the_noreboot_record_keeps_what_was_installed_since_the_last_boot(tmp_path: Path) -> None:
    """What Installs with NoReboot installed accumulates until the machine boots; a boot after
    the record drops it at the next NoReboot Install; unchanged or failed pins are not recorded."""
    from reconciler.agent import noreboot

    def patch(name: str, result: str = "INSTALLED") -> dict[str, object]:
        return {"name": name, "arch": "", "version": "1.0-2", "result": result,
                "changed": result == "INSTALLED"}  # fmt: skip

    assert noreboot.read(str(tmp_path)) is None
    noreboot.record(str(tmp_path), "2026-11-27T02:00:00Z", None, [patch("a"), patch("b", "FAILED")])
    noreboot.record(str(tmp_path), "2026-11-27T03:00:00Z", "2026-11-01T00:00:00Z", [patch("c")])
    assert noreboot.read(str(tmp_path)) == {
        "time": "2026-11-27T03:00:00Z",
        "patches": [
            {"name": "a", "arch": "", "version": "1.0-2"},
            {"name": "c", "arch": "", "version": "1.0-2"},
        ],
    }
    noreboot.record(str(tmp_path), "2026-11-28T03:00:00Z", "2026-11-28T01:00:00Z", [patch("d")])
    assert noreboot.read(str(tmp_path)) == {
        "time": "2026-11-28T03:00:00Z",
        "patches": [{"name": "d", "arch": "", "version": "1.0-2"}],
    }
    noreboot.record(str(tmp_path), "2026-11-28T04:00:00Z", None, [patch("e", "UNCHANGED")])
    assert noreboot.read(str(tmp_path))["time"] == "2026-11-28T03:00:00Z"  # type: ignore[index]
    (tmp_path / "var/lib/patchwarden/no-reboot-install.json").write_text("{not json")
    assert noreboot.read(str(tmp_path)) is None  # a damaged record never stops a scan


def _run_agent(*args: str) -> tuple[int, dict[str, Any]]:
    run = subprocess.run(
        [sys.executable, "-m", "reconciler.agent", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    return run.returncode, json.loads(run.stdout)


def test_boot_id_and_a_reboot_that_the_machine_has_already_done(tmp_path: Path) -> None:
    """The loop's awaited reboot (docs/reboots.md): ``boot-id`` is the kernel's; ``reboot`` with
    an older ``--if-boot-id`` does nothing (the machine booted since), and a directory root is
    never a reason to reboot the host. (The reboot itself runs on the test fleet's machines,
    tests/test_fleet_reboots.py, never on this host.)"""
    kernel = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert _run_agent("boot-id") == (
        0,
        {"apiVersion": "patchwarden.io/v1alpha1", "kind": "Boot", "bootId": kernel},
    )
    rc, document = _run_agent("reboot", "--if-boot-id=an-earlier-boot")
    assert (rc, document["started"], document["bootId"]) == (0, False, kernel)
    assert document["reason"] == "already booted since boot id an-earlier-boot"
    rc, document = _run_agent("reboot", "--root", str(tmp_path), f"--if-boot-id={kernel}")
    assert rc == 1 and document["error"]["code"] == "NotTheHost"
