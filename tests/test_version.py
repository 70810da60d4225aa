"""The version lives in one place, ``reconciler.__version__``; everything that repeats it agrees.

pyproject.toml reads it (``dynamic = ["version"]``). The agent cannot import ``reconciler`` (it is
shipped alone, standard library only), the Helm chart and the Dockerfile are not Python: each keeps
a copy, and this test fails the moment one of them is left behind by a release.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import yaml

from reconciler import __version__
from reconciler.agent import AGENT_VERSION

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_distribution_carries_the_package_version() -> None:
    assert version("patchwarden") == __version__


def test_every_copy_of_the_version_agrees() -> None:
    chart = yaml.safe_load((ROOT / "charts/patchwarden/Chart.yaml").read_text(encoding="utf-8"))
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    tags = re.findall(r"patchwarden:(\d+\.\d+\.\d+)", dockerfile)
    assert AGENT_VERSION == __version__
    assert chart["appVersion"] == __version__
    assert tags and set(tags) == {__version__}


def test_pyproject_does_not_repeat_the_version() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject
    assert not re.search(r'(?m)^version\s*=\s*"', pyproject)
