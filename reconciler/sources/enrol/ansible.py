"""Stage: sources (enrolment). The ``ansibleInventory`` kind: an Ansible inventory (INI or YAML)
in the repository, read with ansible-core's own inventory code (``InventoryManager`` and
``DataLoader``, with the ``group_vars``/``host_vars`` beside it), never by hand, so a host is
enrolled exactly as ``ansible-inventory -i FILE --list`` shows it.

The only module that imports ``ansible`` (the optional extra ``patchwarden[ansible]``), and only
when an inventory is read. The inventory is copied out of the revision into a private temporary
directory first, so nothing outside the repository is read; only ansible's ``ini`` and ``yaml``
inventory plugins and its ``host_group_vars`` vars plugin are enabled, so an inventory can never
run a script or a plugin. ansible's own words (warnings, deprecations) are dropped: stdout and
stderr belong to patchctl. May not plan, dispatch or write state.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from reconciler.api.enrolment import DiscoveredHost
from reconciler.api.resources import AnsibleInventory
from reconciler.sources.enrol.base import Context, DiscoveryRefused, Repository
from reconciler.sources.enrol.ranges import refuse_huge_ranges

GROUP_LABEL_PREFIX = "ansible.group/"
"""Each group a host belongs to (directly or through ``children``) becomes the label
``ansible.group/<group>: "true"``; ``all`` and ``ungrouped`` do not."""
_IMPLICIT_GROUPS = frozenset({"all", "ungrouped"})
# ansible reads its configuration when first imported: these keep it to plain inventory files
# (no script, no plugin), make a file it cannot parse an error instead of an empty inventory,
# and keep its chatter off the terminal. Environment variables win over any ansible.cfg.
_ANSIBLE_SETTINGS = {
    "ANSIBLE_INVENTORY_ENABLED": "ini,yaml",
    "ANSIBLE_VARS_ENABLED": "host_group_vars",
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
    "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true",
    "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    "ANSIBLE_LOCALHOST_WARNING": "false",
    "ANSIBLE_DEPRECATION_WARNINGS": "false",
    "ANSIBLE_NOCOLOR": "true",
}
# ansible keeps global state (its configuration, its Display): one inventory at a time.
_ONE_AT_A_TIME = threading.Lock()


def discover(spec: AnsibleInventory, context: Context) -> list[DiscoveredHost]:
    """Every host of the inventory at ``spec.path`` (in the groups ``spec.groups``, if given)."""
    if context.repository is None:
        raise DiscoveryRefused(
            "ansibleInventory needs a Git or directory source to read the inventory from; "
            "resources from Kubernetes have no repository (use static or ec2 there)"
        )
    content = context.repository.read(spec.path)
    refuse_huge_ranges(spec.path, content.decode("utf-8", errors="replace"))
    with _ONE_AT_A_TIME, _copied(context.repository, spec.path) as path:
        hosts = _parsed(path)
    return _selected(hosts, spec.groups, frozenset(spec.ignore_variables))


@contextmanager
def _copied(repository: Repository, relpath: str) -> Iterator[Path]:
    """The inventory and the group_vars/host_vars beside it, copied into a private directory;
    yields the inventory's path there."""
    folder = PurePosixPath(relpath).parent
    names = [relpath]
    for vars_dir in ("group_vars", "host_vars"):
        names += repository.files_under(str(folder / vars_dir) if str(folder) != "." else vars_dir)
    with tempfile.TemporaryDirectory(prefix="patchwarden-inventory-") as tmp:
        for name in names:
            target = Path(tmp, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(repository.read(name))  # 0600 under a 0700 directory
        yield Path(tmp, relpath)


def _parsed(path: Path) -> list[tuple[str, list[str], dict[str, Any]]]:
    """(host name, its groups, its variables) as ansible-inventory --list sees them."""
    ansible = _ansible()
    try:
        loader = ansible.DataLoader()
        inventory = ansible.InventoryManager(loader=loader, sources=[str(path)])
        variables = ansible.VariableManager(loader=loader, inventory=inventory)
        return [
            (
                str(host.name),
                sorted(str(g.name) for g in host.get_groups() if g.name not in _IMPLICIT_GROUPS),
                dict(variables.get_vars(host=host, include_hostvars=False, stage="all")),
            )
            for host in inventory.get_hosts()
        ]
    except ansible.AnsibleError as exc:
        # ansible says why each plugin failed as warnings, and raises a summary.
        reasons = [line for line in ansible.heard(clear=True) if "Failed to parse" in line]
        message = "; ".join([str(exc), *reasons]).replace(str(path.parent) + "/", "")
        raise DiscoveryRefused(f"ansible cannot read the inventory: {message}") from None
    finally:
        ansible.heard(clear=True)


def _selected(
    parsed: list[tuple[str, list[str], dict[str, Any]]],
    groups: list[str],
    ignored: frozenset[str],
) -> list[DiscoveredHost]:
    known = {group for _, member_of, _ in parsed for group in member_of}
    unknown = sorted(set(groups) - known)
    if unknown:
        raise DiscoveryRefused(f"groups: no group {', '.join(unknown)} in the inventory")
    return [
        _host(name, member_of, variables, ignored)
        for name, member_of, variables in parsed
        if not groups or set(groups) & set(member_of)
    ]


_EXTRA_ARGS = (
    "OpenSSH options are not passed on: write them as the InstanceSource's connection fields "
    "(knownHostsFile, proxyJump) or in <--ssh-dir>/config, and name the variable in "
    "ignoreVariables"
)
_SECRET = (
    "passwords are not taken from inventories: log in with a key and give sudo a NOPASSWD rule"
)
_UNMAPPED: Mapping[str, str] = {
    # Variables that change how Ansible reaches or elevates on the machine, which enrolment cannot
    # carry over: refused, so an inventory never means something other than what it says.
    # (ansibleInventory.ignoreVariables may name the non-secret ones to ignore instead.)
    "ansible_ssh_common_args": _EXTRA_ARGS,
    "ansible_ssh_extra_args": _EXTRA_ARGS,
    "ansible_ssh_args": _EXTRA_ARGS,
    "ansible_password": _SECRET,
    "ansible_ssh_pass": _SECRET,
    "ansible_ssh_password": _SECRET,
    "ansible_become_password": _SECRET,
    "ansible_become_pass": _SECRET,
    "ansible_become_flags": "sudo runs as `sudo -n`; other flags are not supported",
}


def _host(
    name: str, groups: list[str], variables: Mapping[str, Any], ignored: frozenset[str]
) -> DiscoveredHost:
    """One host, from the variables ansible gives it (see docs/enrolment.md for which)."""
    read = _Reader(name, variables)
    connection = read.text("ansible_connection")
    if connection not in (None, "ssh", "smart", "paramiko"):
        read.refuse("ansible_connection", f"{connection!r}: only SSH machines can be enrolled")
    for variable in sorted(_UNMAPPED.keys() - ignored):
        if read.text(variable) is not None:
            read.refuse(variable, _UNMAPPED[variable])
    become = read.flag("ansible_become")
    method = read.text("ansible_become_method")
    if become and method not in (None, "sudo"):
        read.refuse("ansible_become_method", f"{method!r}: only sudo is supported (become: sudo)")
    key = read.text("ansible_ssh_private_key_file") or read.text("ansible_private_key_file")
    if key is not None and key.startswith("~"):
        read.refuse(
            "ansible_ssh_private_key_file",
            f"{key!r}: '~' is not expanded; give the key's path inside the controller's --ssh-dir",
        )
    return DiscoveredHost(
        id=name,
        address=read.text("ansible_host") or name,
        port=read.port("ansible_port"),
        user=read.text("ansible_user"),
        labels={f"{GROUP_LABEL_PREFIX}{group}": "true" for group in groups},
        identity_file=key,
        become="sudo" if become else None,
        # As in Ansible, ansible_become_user applies only when ansible_become is on.
        become_user=read.text("ansible_become_user") if become else None,
    )


class _Reader:
    """A host's variables, read as the types enrolment needs; refusals name host and variable."""

    def __init__(self, host: str, variables: Mapping[str, Any]) -> None:
        self.host, self.variables = host, variables

    def refuse(self, variable: str, message: str) -> None:
        raise DiscoveryRefused(f"host {self.host}: {variable}: {message}")

    def text(self, variable: str) -> str | None:
        value = self.variables.get(variable)
        if value is None:
            return None
        text = str(value)
        if "{{" in text or "{%" in text:
            self.refuse(variable, f"{text!r} is a template; enrolment takes values, not templates")
        return text

    def flag(self, variable: str) -> bool:
        value = self.variables.get(variable)
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("yes", "on", "true", "1", "y", "t"):
            return True
        if text in ("no", "off", "false", "0", "n", "f", ""):
            return False
        self.refuse(variable, f"{value!r} is not a boolean (yes/no, true/false)")
        return False

    def port(self, variable: str) -> int | None:
        text = self.text(variable)
        if text is None:
            return None
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            self.refuse(variable, f"{text!r} is not a port number (1-65535)")
        return int(text)


class _Ansible:
    """ansible-core's inventory API, imported once, with its output kept off the terminal."""

    def __init__(self) -> None:
        os.environ.update(_ANSIBLE_SETTINGS)
        try:
            from ansible.errors import AnsibleError
            from ansible.inventory.manager import InventoryManager
            from ansible.parsing.dataloader import DataLoader
            from ansible.utils.display import Display
            from ansible.vars.manager import VariableManager
        except ImportError:
            raise DiscoveryRefused(
                "ansibleInventory needs ansible-core: pip install 'patchwarden[ansible]'"
            ) from None
        # Every word ansible prints goes through Display.display, to patchctl's stdout or
        # stderr: kept here instead, for the error that explains a failed parse.
        Display().display = self._hear
        self.AnsibleError, self.InventoryManager = AnsibleError, InventoryManager
        self.DataLoader, self.VariableManager = DataLoader, VariableManager
        self._heard: list[str] = []

    def _hear(self, message: str, *_args: object, **_kwargs: object) -> None:
        first = message.strip().splitlines()[0] if message.strip() else ""
        self._heard.append(first.removeprefix("[WARNING]: ").strip())

    def heard(self, *, clear: bool) -> list[str]:
        """What ansible said since the last call (first lines, without [WARNING])."""
        heard = list(self._heard)
        if clear:
            self._heard.clear()
        return heard


_loaded: list[_Ansible] = []


def _ansible() -> _Ansible:
    if not _loaded:
        _loaded.append(_Ansible())
    return _loaded[0]
