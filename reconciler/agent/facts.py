"""Stage: agent. What the machine is: OS, version, architecture, kernel, pending reboot.

Everything is read below the system root (``/`` for the host, a directory for a system rooted
there), so the same code describes the host and an isolated root (docs/agent.md, --root).
"""

import os
import platform
import re
import shlex
from typing import Dict, List, Optional

from reconciler.agent.errors import UnsupportedSystem
from reconciler.agent.stamps import utc_stamp

# /etc/os-release ID -> SSM operatingSystem. ID_LIKE is consulted for derivatives.
OS_BY_ID = {
    "debian": "DEBIAN",
    "ubuntu": "UBUNTU",
    "raspbian": "RASPBIAN",
    "amzn": None,  # decided by VERSION_ID below
    "rhel": "REDHAT_ENTERPRISE_LINUX",
    "centos": "CENTOS",
    "ol": "ORACLE_LINUX",
    "rocky": "ROCKY_LINUX",
    "almalinux": "ALMA_LINUX",
    "sles": "SUSE",
    "sled": "SUSE",
    "opensuse-leap": "SUSE",
}
_AMAZON = {"2": "AMAZON_LINUX_2", "2022": "AMAZON_LINUX_2022", "2023": "AMAZON_LINUX_2023"}
_PRODUCT = {
    "DEBIAN": "Debian",
    "UBUNTU": "Ubuntu",
    "RASPBIAN": "Raspbian",
    "AMAZON_LINUX": "AmazonLinux",
    "AMAZON_LINUX_2": "AmazonLinux",
    "AMAZON_LINUX_2022": "AmazonLinux",
    "AMAZON_LINUX_2023": "AmazonLinux",
    "REDHAT_ENTERPRISE_LINUX": "RedhatEnterpriseLinux",
    "CENTOS": "CentOS",
    "ORACLE_LINUX": "OracleLinux",
    "ROCKY_LINUX": "RockyLinux",
    "ALMA_LINUX": "AlmaLinux",
    "SUSE": "Suse",
}


def below(root: str, path: str) -> str:
    """``path`` (absolute) inside the system rooted at ``root``."""
    return os.path.join(root, path.lstrip("/"))


def read_os_release(root: str) -> Dict[str, str]:
    """The key/value pairs of ``ROOT/etc/os-release`` (or ``usr/lib/os-release``)."""
    for candidate in ("/etc/os-release", "/usr/lib/os-release"):
        path = below(root, candidate)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as handle:
                return parse_os_release(handle.read())
    raise UnsupportedSystem(
        "no /etc/os-release under {}: not an operating system root".format(root)
    )


def parse_os_release(text: str) -> Dict[str, str]:
    values = {}  # type: Dict[str, str]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw)
        except ValueError:
            parts = [raw.strip("\"'")]
        values[key.strip()] = parts[0] if parts else ""
    return values


def operating_system(release: Dict[str, str]) -> str:
    """The SSM operatingSystem value for an os-release mapping."""
    os_id = release.get("ID", "").lower()
    if os_id == "amzn":
        version = release.get("VERSION_ID", "")
        return _AMAZON.get(version, "AMAZON_LINUX")
    found = OS_BY_ID.get(os_id)
    if found:
        return found
    for like in release.get("ID_LIKE", "").lower().split():
        if OS_BY_ID.get(like):
            return str(OS_BY_ID[like])
    raise UnsupportedSystem(
        "unsupported operating system {!r} (from /etc/os-release ID)".format(os_id or "unknown")
    )


def product(os_name: str, version: str) -> str:
    """SSM's product name (Ubuntu22.04, Debian12, AmazonLinux2023...)."""
    return "{}{}".format(_PRODUCT.get(os_name, os_name.title()), version)


def reboot_required(root: str) -> List[str]:
    """Packages that asked for a reboot (``reboot-required.pkgs``); ``[""]`` if only the flag is
    set; ``[]`` when no reboot is pending."""
    for base in ("/run", "/var/run"):
        flag = below(root, base + "/reboot-required")
        if os.path.exists(flag):
            pkgs_file = flag + ".pkgs"
            names = []  # type: List[str]
            if os.path.isfile(pkgs_file):
                with open(pkgs_file, encoding="utf-8", errors="replace") as handle:
                    names = sorted({n.strip() for n in handle if n.strip()})
            return names or [""]
    return []


def boot_time(root: str) -> Optional[str]:
    """When the host booted (ISO-8601 UTC); None for a directory root, which never booted."""
    if root != "/":
        return None
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("btime "):
                    seconds = int(line.split()[1])
                    return utc_stamp(seconds)
    except OSError:
        return None
    return None


def kernel(root: str) -> Optional[str]:
    """The running kernel release; None for a directory root (it runs no kernel of its own)."""
    return platform.release() if root == "/" else None


def hostname(root: str) -> Optional[str]:
    if root == "/":
        return platform.node() or None
    path = below(root, "/etc/hostname")
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            name = handle.read().strip()
            return name or None
    return None


_VALID_VERSION = re.compile(r"^[0-9A-Za-z.]+$")


def facts(root: str, arch: str) -> Dict[str, object]:
    """The ``facts`` object of the inventory document."""
    release = read_os_release(root)
    os_name = operating_system(release)
    version = release.get("VERSION_ID", "")
    if not _VALID_VERSION.match(version or "x"):
        version = ""
    pending = reboot_required(root)
    out = {
        "osId": release.get("ID", ""),
        "osVersion": version,
        "operatingSystem": os_name,
        "product": product(os_name, version),
        "codename": release.get("VERSION_CODENAME") or None,
        "arch": arch,
        "kernel": kernel(root),
        "bootTime": boot_time(root),
        "rebootRequired": bool(pending),
        "rebootRequiredPackages": [p for p in pending if p],
        "hostname": hostname(root),
    }  # type: Dict[str, object]
    return {k: v for k, v in out.items() if v is not None}
