"""The docs do not lie: every ```console block of README.md, docs/*.md and examples/README.md runs
(tests/docs_console.py says how, CONTRIBUTING.md how to write one), and every relative link in
them points at a file of this repository.

One demo fleet (scripts/demo.py: six Debian roots patched from a Git repository) serves every
document: its state is the default state database of the shell the commands run in.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from sybil import Example
from sybil.example import SybilFailure

from tests.conftest import needs_apt
from tests.docs_console import DOCS, ROOT, Workspace, environment, examples

BLOCKS = [(doc, example) for doc in DOCS for example in examples(doc)]


def block_id(block: tuple[Path, Example]) -> str:
    return f"{block[0].relative_to(ROOT)}:{block[1].line}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    base = tmp_path_factory.mktemp("docs")
    home, cwd, state_home = base / "home", base / "work", base / "state"
    home.mkdir()
    # The repository's files where a clone has them; the placeholders the docs name (your
    # baseline, an inventory) at the top.
    shutil.copytree(ROOT / "tests" / "docfiles", cwd)
    for name in ("examples", "tests", "charts"):
        (cwd / name).symlink_to(ROOT / name)
    # The demo's directory is where patchctl looks by default ($XDG_STATE_HOME/patchwarden).
    demo = subprocess.run(
        [sys.executable, "scripts/demo.py", str(state_home / "patchwarden")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    return Workspace(cwd, environment(home, state_home))


@needs_apt
@pytest.mark.parametrize("block", BLOCKS, ids=block_id)
def test_console_block_does_what_its_doc_shows(
    block: tuple[Path, Example], workspace: Workspace
) -> None:
    _, example = block
    example.namespace["workspace"] = workspace
    example.evaluate()


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_resolves_inside_the_repository() -> None:
    broken = []
    for doc in [*DOCS, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"]:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for target in LINK.findall(line):
                if urlparse(target).scheme or target.startswith("#"):
                    continue
                path = (doc.parent / unquote(target.partition("#")[0])).resolve()
                if not path.is_relative_to(ROOT) or not path.exists():
                    broken.append(f"{doc.relative_to(ROOT)}:{number}: {target}")
    assert not broken, "links to nothing in this repository:\n" + "\n".join(broken)


def test_no_doc_cites_a_file_outside_the_repository() -> None:
    """Docstrings and comments included: a reader of a clone must be able to follow them."""
    code = [*(ROOT / "reconciler").rglob("*.py"), *(ROOT / "reconciler").rglob("*.yaml")]
    cited = []
    for doc in [*DOCS, ROOT / "CONTRIBUTING.md", *sorted(code)]:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"DESIGN §|shared/reference", line):
                cited.append(f"{doc.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not cited, "cites what a clone does not have:\n" + "\n".join(cited)


BROKEN_DOC = """\
A command whose output the doc gets wrong:

```console
$ patchctl validate examples/
examples: valid (1 PatchBaseline)
```

One that cannot run here, with an option patchctl does not have:

<!-- docs: not-run: needs a cluster -->
```console
$ patchctl controller --namespace patchwarden --kubeconfig-path ~/.kube/config
```

And one whose output varies where the doc says `...`:

```console
$ patchctl --version
patchctl ...
```
"""


def test_a_doc_that_no_longer_matches_its_command_fails(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(BROKEN_DOC)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    wrong, unknown, varies = examples(doc)
    for example in (wrong, unknown, varies):
        example.namespace["workspace"] = Workspace(tmp_path, environment(tmp_path, tmp_path))
    with pytest.raises(SybilFailure, match=r"line 4: `patchctl validate examples/` printed"):
        wrong.evaluate()
    with pytest.raises(SybilFailure, match=r"line 12: .*\['--kubeconfig-path'\]"):
        unknown.evaluate()
    varies.evaluate()
