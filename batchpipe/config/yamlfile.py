"""Reading a job config file: text, bounded YAML, and where each field sits (its line).

The data is built with yaml.SafeLoader (plain data only, never Python objects); the node tree
is kept beside it so that every problem can name the line of the field it is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from batchpipe.errors import ConfigError


def read_text(path: Path, name: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{name}: config file not found", hint=f"check the path (looked for {path.absolute()})"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a config file", hint="give the path of a .yaml file") from None
    except PermissionError:
        raise ConfigError(f"{name}: permission denied", hint="make the config file readable") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{name} line {line}: the config file is not valid UTF-8", hint="save the file as UTF-8"
        ) from None


# The most values YAML aliases may add to a config, all aliases of the file together. A config
# of a few hundred values is normal; a file whose aliases list aliases (a "billion laughs")
# expands to billions and would take every byte of memory while the config is checked.
MAX_ALIAS_VALUES = 10_000


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts, while it composes, how many values each alias stands for.

    An alias is composed as a second reference to its anchor's node, so nothing grows while
    parsing; it is everything afterwards (checking, copying, writing every request) that
    expands it. Counting here stops a bomb before any of that, with the line of the alias.
    """

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self._name = name
        self._values: dict[int, int] = {}  # id(node) -> values in it, every alias inside expanded
        self._open: set[str] = set()  # anchors whose node is being composed
        self._aliased = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1
            if event.anchor in self._open:
                raise ConfigError(
                    f"{self._name} line {line}: alias *{event.anchor} refers to itself (it is used inside "
                    f"the value &{event.anchor} names), which JSON cannot carry",
                    hint="write the value out instead of the alias",
                )
            node = super().compose_node(parent, index)
            self._aliased += self._values.get(id(node), 1)
            if self._aliased > MAX_ALIAS_VALUES:
                raise ConfigError(
                    f"{self._name} line {line}: YAML aliases here expand to more than {MAX_ALIAS_VALUES:,} values "
                    "(all aliases of the file together)",
                    hint="write the values out, or use fewer aliases; aliases that repeat aliases multiply "
                    "(a 'billion laughs' file) and would take all the memory of the machine",
                )
            return node
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        self._open.discard(anchor)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        self._values[id(node)] = 1 + sum(self._values.get(id(child), 1) for child in children)
        return node


def parse_yaml(text: str, name: str) -> tuple[yaml.Node, Any]:
    """Compose the node tree (for line numbers) and construct the data with the safe loader.

    This is exactly what yaml.safe_load does, done in two visible steps so that the node
    tree is kept: SafeLoader only builds plain data (no Python objects, no code). Aliases
    are counted as they are composed (_BoundedLoader).
    """
    loader = _BoundedLoader(text, name)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(
                f"{name} line 1: the config file is empty",
                hint="write at least model:, input: path and prompt: user (see the README)",
            )
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        where = f" at column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(
            f"{name}{line}: not valid YAML: {problem}{where}",
            hint="check the indentation and quoting on that line (or the one before); quote text that "
            "contains ': ' or starts with '{', '[', '*', '&', '!', '%', '@' or '`'",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return root, data


@dataclass(frozen=True)
class Problem:
    line: int
    text: str
    hint: str | None = None


class Locator:
    """Maps a field path (tuple of keys) to its key and value nodes in the YAML tree."""

    def __init__(self, root: yaml.Node) -> None:
        self.root = root
        self.nodes: dict[tuple[Any, ...], tuple[yaml.Node, yaml.Node]] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        self._walk(root, (), depth=0)

    def _walk(self, node: yaml.Node, path: tuple[Any, ...], depth: int) -> None:
        if depth > 50:  # recursive aliases (`&a [*a]`) would never end
            return
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = _scalar_key(self._constructor, key_node)
                self.nodes[(*path, key)] = (key_node, value_node)
                self._walk(value_node, (*path, key), depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.nodes[(*path, i)] = (item, item)
                self._walk(item, (*path, i), depth + 1)

    def line(self, path: tuple[Any, ...]) -> int:
        """The line of the key at `path`, else of its nearest existing parent."""
        while path:
            if path in self.nodes:
                return self.nodes[path][0].start_mark.line + 1
            path = path[:-1]
        return self.root.start_mark.line + 1

    def value_node(self, path: tuple[Any, ...]) -> yaml.Node | None:
        found = self.nodes.get(path)
        return found[1] if found else None


def _scalar_key(constructor: yaml.constructor.SafeConstructor, node: yaml.ScalarNode) -> Any:
    """The Python value SafeLoader gives a scalar key (`yes` is True, `1` is 1)."""
    try:
        return constructor.construct_object(node)
    except yaml.YAMLError:
        return node.value


def duplicate_keys(root: yaml.Node) -> list[Problem]:
    """The same key twice in one mapping: YAML keeps the last silently; we refuse it."""
    problems: list[Problem] = []
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node) -> None:
        if id(node) in seen_nodes:
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    ident = (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if ident in first:
                        problems.append(
                            Problem(
                                line,
                                f"key '{key_node.value}' appears twice in the same mapping (first on line "
                                f"{first[ident]})",
                                "keep one of them; YAML would silently use the last",
                            )
                        )
                    else:
                        first[ident] = line
                walk(value_node)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    walk(root)
    return problems


def show(value: Any) -> str:
    """A value as the user wrote it, for 'got ...' in messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, datetime):
        return f"the date-time {value.isoformat()}"
    if isinstance(value, date):
        return f"the date {value.isoformat()}"
    return str(value)


def dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def raise_problems(name: str, problems: list[Problem]) -> None:
    """One ConfigError (exit 2) listing every problem, sorted by line; nothing when there are none."""
    if not problems:
        return
    problems = sorted(dict.fromkeys(problems), key=lambda p: p.line)  # stable: keeps order within a line
    if len(problems) == 1:
        (p,) = problems
        raise ConfigError(f"{name} line {p.line}: {p.text}", hint=p.hint)
    lines = [f"{name} has {len(problems)} problems:"]
    lines += [f"  {name} line {p.line}: {p.text}" for p in problems]
    hints = [f"line {p.line}: {p.hint}" for p in problems if p.hint]
    raise ConfigError("\n".join(lines), hint="\n".join(hints) or None)
