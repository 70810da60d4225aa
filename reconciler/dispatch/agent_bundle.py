"""Stage: dispatch. The agent as one file: a zipapp of ``reconciler/agent`` plus a bare
``reconciler`` package, nothing else, runnable by any python3 >= 3.6 (``python3 agent.pyz scan``).

The archive is reproducible — entries in sorted order with a fixed timestamp and mode — so its
SHA-256 names a version of the agent: the built file is cached under that name here, and
transports that copy it to machines (ssh) copy it once per version under the same name.

Standard library only, and it never imports the agent (it is packaged as files, not run here), so
``scripts/build-agent`` can load this module by path with a bare python3.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

AGENT_SOURCE = Path(__file__).resolve().parent.parent / "agent"
"""The agent package's directory, shipped as files."""
INTERPRETER = "/usr/bin/env python3"

# The zip format cannot store dates before 1980; any fixed date makes the archive reproducible.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_PACKAGE_INIT = '"""Patchwarden (agent only)."""\n'
_MAIN = "import sys\nfrom reconciler.agent.__main__ import main\nsys.exit(main())\n"


def _members(source: Path) -> list[tuple[str, bytes]]:
    files = [
        path
        for path in source.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    ]
    members = [
        (f"reconciler/agent/{path.relative_to(source).as_posix()}", path.read_bytes())
        for path in files
    ]
    members += [("reconciler/__init__.py", _PACKAGE_INIT.encode()), ("__main__.py", _MAIN.encode())]
    sources = {n: d for n, d in members if n.endswith(".py") and n != "__main__.py"}
    members += [(name[:-3] + ".pyc", code) for name, code in _bytecode(sources).items()]
    return sorted(members)


# Compiled in a fresh interpreter: marshal's output depends on the process's interned strings,
# so compiling in a long-lived process would make the archive's bytes (and name) vary.
_COMPILER = """
import base64, importlib.util, json, marshal, sys
out = {}
for name, text in json.load(sys.stdin).items():
    source = base64.b64decode(text)
    code = compile(source, name, "exec", dont_inherit=True)
    header = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little")
    pyc = header + importlib.util.source_hash(source) + marshal.dumps(code)
    out[name] = base64.b64encode(pyc).decode()
json.dump(out, sys.stdout)
"""


def _bytecode(sources: dict[str, bytes]) -> dict[str, bytes]:
    """Each source compiled for this interpreter as an unchecked hash-based .pyc (PEP 552) that
    zipimport loads beside the source: a zip cannot cache bytecode, so without it every run
    would compile the whole agent again. Another Python version ignores it (its magic number
    differs) and compiles the source."""
    request = json.dumps({n: base64.b64encode(d).decode() for n, d in sources.items()})
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-I", "-S", "-c", _COMPILER],
        input=request,
        capture_output=True,
        text=True,
        check=True,
    )
    return {n: base64.b64decode(t) for n, t in json.loads(done.stdout).items()}


def agent_bytes(source: Path = AGENT_SOURCE) -> bytes:
    """The zipapp's bytes: the same sources always give the same bytes (on one zlib)."""
    buffer = io.BytesIO()
    # What zipapp.create_archive writes, minus the file timestamps that make it differ per build.
    buffer.write(f"#!{INTERPRETER}\n".encode())
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in _members(source):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so the mode below is honoured everywhere
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def _write_atomically(target: Path, data: bytes) -> None:
    # Concurrent builders (threads, processes) each write a private file and rename it: a reader
    # never sees a half-written archive, and the last rename wins with identical bytes.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_agent(target: Path) -> Path:
    """Write the agent zipapp to ``target`` (executable) and return it."""
    _write_atomically(target, agent_bytes())
    return target


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/patchwarden``, or ``~/.cache/patchwarden``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "patchwarden"


def agent_zipapp(cache_dir: Path | None = None) -> Path:
    """The agent zipapp of these sources, built once per content into ``cache_dir``
    (``default_cache_dir()``) as ``agent-<sha256[:16]>.pyz``."""
    data = agent_bytes()
    digest = hashlib.sha256(data).hexdigest()
    target = (cache_dir or default_cache_dir()) / f"agent-{digest[:16]}.pyz"
    if not target.is_file() or target.stat().st_size != len(data):
        _write_atomically(target, data)
    return target
