"""Stage: api. Safe YAML reading that remembers where every field was written.

Input is text a user committed, so it is treated as hostile: size, nesting depth and alias
expansion are bounded, duplicate keys are errors (PyYAML would silently keep the last one), only
the standard tags are accepted, and YAML 1.1 timestamps stay text so that the schema decides what a
date is.
Every value's line is recorded so errors can say ``file:line``. Pure: takes text, not paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 48
MAX_NODES = 200_000  # after alias expansion: refuses "billion laughs" documents

_STANDARD = "tag:yaml.org,2002:"
# The tags plain YAML resolves to; anything else (!!python/object, !!set, !Ref, ...) is refused.
_SCALAR_TAGS = frozenset(
    _STANDARD + name for name in ("str", "int", "float", "bool", "null", "timestamp")
)
_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")

Path = tuple[str | int, ...]


class YamlError(Exception):
    """The text is not acceptable YAML; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Document:
    """One YAML document: its data and the line each path in it was written on."""

    data: Any
    line: int
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        """Line of the longest prefix of ``path`` that was written down."""
        for end in range(len(path), 0, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return self.line


def decode(raw: bytes) -> str:
    """UTF-8 text, or a YamlError saying why the bytes are not a YAML file."""
    if len(raw) > MAX_BYTES:
        # Sources read at most one byte past the limit, so the real size is not known here.
        raise YamlError(
            1, f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB ({MAX_BYTES} bytes); refused"
        )
    if raw.startswith(_UTF16_32_BOMS):
        raise YamlError(1, "UTF-16 or UTF-32 text; save the file as UTF-8")
    if b"\x00" in raw:
        raise YamlError(1, "binary file (contains NUL bytes), not YAML")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlError(line, "not UTF-8 text; save the file as UTF-8") from None


def documents(text: str) -> Iterator[Document]:
    """Every non-empty document in ``text``; raises YamlError at the first unreadable one."""
    loader = yaml.SafeLoader(text)
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                node = loader.get_node()
            except yaml.MarkedYAMLError as exc:
                mark = exc.problem_mark or exc.context_mark
                line = mark.line + 1 if mark else 1
                raise YamlError(line, f"invalid YAML: {exc.problem or exc.context}") from None
            except RecursionError:
                raise YamlError(1, f"nesting is too deep (more than {MAX_DEPTH} levels)") from None
            if node is None:
                continue
            builder = _Builder()
            data = builder.build(node, (), 0)
            if data is None:
                continue
            yield Document(data=data, line=node.start_mark.line + 1, lines=builder.lines)
    finally:
        loader.dispose()


class _Builder:
    def __init__(self) -> None:
        self.lines: dict[Path, int] = {}
        self.count = 0
        self.scalars = SafeConstructor()

    def build(self, node: Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlError(
                node.start_mark.line + 1,
                f"document expands to more than {MAX_NODES} values (alias bomb?)",
            )
        if depth > MAX_DEPTH:
            raise YamlError(node.start_mark.line + 1, f"nesting is deeper than {MAX_DEPTH} levels")
        if isinstance(node, MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            _check_tag(node, frozenset({_STANDARD + "seq"}))
            out = []
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = item.start_mark.line + 1
                out.append(self.build(item, (*path, index), depth + 1))
            return out
        assert isinstance(node, ScalarNode)
        return self._scalar(node)

    def _mapping(self, node: MappingNode, path: Path, depth: int) -> dict[Any, Any]:
        _check_tag(node, frozenset({_STANDARD + "map"}))
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlError(line, "merge keys (<<) are not supported; write the fields out")
            if not isinstance(key_node, ScalarNode):
                raise YamlError(line, "mapping keys must be plain scalars")
            key = self._scalar(key_node)
            if not isinstance(key, str | int | bool | float) and key is not None:
                key = str(key)
            if key in out:
                raise YamlError(line, f"duplicate key {key!r} (the earlier value would be lost)")
            self.lines[(*path, key)] = line
            out[key] = self.build(value_node, (*path, key), depth + 1)
        return out

    def _scalar(self, node: ScalarNode) -> Any:
        _check_tag(node, _SCALAR_TAGS)
        if node.tag == _STANDARD + "timestamp":
            # Dates stay text: the schema decides whether a date, a time or a string is meant.
            return node.value
        try:
            return self.scalars.construct_object(node)
        except ConstructorError as exc:
            raise YamlError(node.start_mark.line + 1, f"unsupported YAML: {exc.problem}") from None
        except (ValueError, KeyError, IndexError):  # an explicit tag on a value it can't read
            tag = node.tag.replace(_STANDARD, "!!", 1)
            raise YamlError(
                node.start_mark.line + 1, f"{node.value!r} is not a valid {tag} value"
            ) from None


def _check_tag(node: Node, allowed: frozenset[str]) -> None:
    if node.tag not in allowed:
        tag = node.tag.replace(_STANDARD, "!!", 1)
        raise YamlError(
            node.start_mark.line + 1,
            f"unsupported tag {tag}: only plain YAML (mappings, lists, strings, numbers, "
            "booleans, null) is accepted",
        )
