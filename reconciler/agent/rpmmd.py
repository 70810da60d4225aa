"""Stage: agent. The rpm-md repository metadata (``repomd.xml`` -> ``primary``, ``updateinfo``)
that dnf, yum and zypper keep in their caches: build times, source packages, requirements and
update notices, read without running the package manager. Standard library only; it only reads
the cached files it is given and runs no command.
"""

import gzip
import lzma
import os
import re
import xml.etree.ElementTree as ET
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

from reconciler.agent.rpmvercmp import evr_text
from reconciler.agent.stamps import utc_stamp

_NS = {
    "repo": "http://linux.duke.edu/metadata/repo",
    "common": "http://linux.duke.edu/metadata/common",
    "rpm": "http://linux.duke.edu/metadata/rpm",
}


class Metadata(NamedTuple):
    packages: Dict[Tuple[str, str, str], Dict[str, object]]
    notices: Dict[str, Dict[str, object]]
    shipped: Dict[str, List[Tuple[str, str, str]]]
    """advisory -> the (name, arch, evr) it ships, as :func:`updateinfo_packages` gives it."""


def read_cache(directories: List[str]) -> Metadata:
    """Build times, source packages, requirements and update notices from cached repodata
    (each file parsed once per scan)."""
    packages = {}  # type: Dict[Tuple[str, str, str], Dict[str, object]]
    notices = {}  # type: Dict[str, Dict[str, object]]
    shipped = {}  # type: Dict[str, List[Tuple[str, str, str]]]
    for kind, root in _repodata(directories, ("primary", "updateinfo")):
        if kind == "primary":
            packages.update(_primary(root))
        else:
            notices.update(_updateinfo(root))
            _add_shipped(shipped, root)
    return Metadata(packages, notices, shipped)


def updateinfo_packages(directories: List[str]) -> Dict[str, List[Tuple[str, str, str]]]:
    """advisory -> [(name, arch, [epoch:]version-release)] from cached updateinfo.xml files
    (rpm-md repodata, as dnf, yum and zypper all keep it)."""
    out = {}  # type: Dict[str, List[Tuple[str, str, str]]]
    for _, root in _repodata(directories, ("updateinfo",)):
        _add_shipped(out, root)
    return out


def _add_shipped(out: Dict[str, List[Tuple[str, str, str]]], root: ET.Element) -> None:
    for update in root.iter("update"):
        advisory = (update.findtext("id") or "").strip()
        packages = [
            (p.get("name", ""), p.get("arch", ""), _pkg_evr(p)) for p in update.iter("package")
        ]
        if advisory:
            out.setdefault(advisory, []).extend(packages)


def _repodata(directories: List[str], kinds: Tuple[str, ...]) -> Iterator[Tuple[str, ET.Element]]:
    """(type, parsed XML) of every readable cached repodata file of the given types."""
    for directory in directories:
        try:
            repomd = ET.parse(os.path.join(directory, "repomd.xml")).getroot()
        except (OSError, ET.ParseError):
            continue
        for data in repomd.findall("repo:data", _NS):
            kind = data.get("type") or ""
            location = data.find("repo:location", _NS)
            if kind not in kinds or location is None:
                continue
            path = _cached_file(directory, os.path.basename(location.get("href", "")))
            if path is None:
                continue
            try:
                root = ET.fromstring(_read_compressed(path))
            except (OSError, ET.ParseError, EOFError, lzma.LZMAError):
                continue
            yield kind, root


def by_package(
    shipped: Dict[str, List[Tuple[str, str, str]]],
) -> Dict[Tuple[str, str, str], List[Tuple[str, str]]]:
    """(name, arch, evr) -> [(advisory, "")]: the notices that ship each version."""
    out = {}  # type: Dict[Tuple[str, str, str], List[Tuple[str, str]]]
    for advisory, packages in shipped.items():
        for package in packages:
            out.setdefault(package, []).append((advisory, ""))
    return out


def _cached_file(directory: str, name: str) -> Optional[str]:
    for candidate in (os.path.join(directory, name), os.path.join(directory, "..", name)):
        if name and os.path.isfile(candidate):
            return candidate
    return None


def _read_compressed(path: str) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if path.endswith(".bz2"):
        import bz2

        return bz2.decompress(data)
    return data


def _primary(root: ET.Element) -> Iterator[Tuple[Tuple[str, str, str], Dict[str, object]]]:
    for pkg in root.findall("common:package", _NS):
        name = pkg.findtext("common:name", "", _NS)
        arch = pkg.findtext("common:arch", "", _NS)
        version = pkg.find("common:version", _NS)
        if version is None:
            continue
        evr = evr_text(version.get("epoch", "0"), version.get("ver", ""), version.get("rel", ""))
        built = pkg.find("common:time", _NS)
        fmt = pkg.find("common:format", _NS)
        requires = []  # type: List[str]
        source = None
        if fmt is not None:
            source = source_name(fmt.findtext("rpm:sourcerpm", "", _NS))
            for entry in fmt.findall("rpm:requires/rpm:entry", _NS):
                req = entry.get("name", "")
                # File and rpmlib() capabilities are not packages a BLOCK pattern names.
                if req and not req.startswith("/") and "(" not in req and req not in requires:
                    requires.append(req)
        yield (
            (name, arch, evr),
            {
                "buildTime": iso_time(built.get("build", "") if built is not None else ""),
                "sourcePackage": source,
                "requires": requires,
            },
        )


def _updateinfo(root: ET.Element) -> Iterator[Tuple[str, Dict[str, object]]]:
    for update in root.iter("update"):
        advisory = (update.findtext("id") or "").strip()
        if not advisory:
            continue
        refs = update.findall("references/reference")
        issued = update.find("issued")
        updated = update.find("updated")
        yield (
            advisory,
            {
                "type": update.get("type", ""),
                "severity": (update.findtext("severity") or "").strip() or None,
                "issued": _moment(issued.get("date", "") if issued is not None else ""),
                "updated": _moment(updated.get("date", "") if updated is not None else ""),
                "cves": [r.get("id", "") for r in refs if r.get("type") == "cve" and r.get("id")],
                "bugzillaIds": [
                    r.get("id", "") for r in refs if r.get("type") == "bugzilla" and r.get("id")
                ],
                "rebootSuggested": {
                    (p.get("name", ""), p.get("arch", ""), _pkg_evr(p))
                    for p in update.iter("package")
                    if (p.findtext("reboot_suggested") or "").strip().lower()
                    in ("true", "1", "yes")
                },
            },
        )


def _pkg_evr(p: ET.Element) -> str:
    return evr_text(p.get("epoch", "0"), p.get("version", ""), p.get("release", ""))


def source_name(srpm: str) -> Optional[str]:
    """``demo-lib-1.0-2.src.rpm`` -> ``demo-lib``."""
    if not srpm or srpm == "(none)":
        return None
    parts = srpm.rsplit("-", 2)
    return parts[0] if len(parts) == 3 else srpm


def iso_time(seconds: str) -> Optional[str]:
    try:
        value = int(seconds)
    except ValueError:
        return None
    return utc_stamp(value) if value > 0 else None


def _moment(text: str) -> Optional[str]:
    """A notice date -> YYYY-MM-DDTHH:MM:SSZ, keeping its time of day: SSM's approve-after-days
    counts whole 24 hours from it. createrepo writes "2024-01-15 08:30:00" (UTC, as libsolv reads
    it), SUSE seconds since the epoch; a day alone ("2024-01-15") is midnight UTC."""
    text = text.strip()
    found = re.match(r"^(\d{4}-\d{2}-\d{2})(?:[ T](\d{2}:\d{2}(?::\d{2})?))?", text)
    if found:
        clock = found.group(2) or "00:00:00"
        return "{}T{}Z".format(found.group(1), clock if len(clock) == 8 else clock + ":00")
    return iso_time(text) if text.isdigit() else None
