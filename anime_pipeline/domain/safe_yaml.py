"""Hostile-input-safe YAML loading for the episode contract files.

``load_yaml(text)`` parses a YAML document once, with libyaml's C parser when PyYAML was
built with it (``yaml.CSafeLoader``, else the pure-Python ``SafeLoader``), and builds the
plain Python value itself from the parser's event stream, without recursion and without
ever materialising anything the limits forbid:

* anchors (``&a``) and aliases (``*a``) are refused outright (no circular structures, no
  "billion laughs"), as are merge keys (``<<``);
* nesting is limited (:data:`MAX_DEPTH` mappings/sequences deep) and so is the number of
  nodes in a document, checked as each node starts, before it is built;
* numbers are limited in length (:data:`MAX_NUMBER_CHARS`), so no 4,301-digit integer ever
  reaches ``int()``;
* every string (keys included) must consist of characters YAML admits in a document: an
  escape such as ``"\\ud800"`` (a lone surrogate) or ``"\\0"`` cannot smuggle in what the
  file itself may not contain;
* only the standard tags of the YAML core/safe schema are understood (``!!str``, ``!!int``,
  ``!!float``, ``!!bool``, ``!!null``, ``!!timestamp``, ``!!map``, ``!!seq``);
* mapping keys must be scalars and unique; the stream must hold a single document.

Anything else raises :class:`YamlRefused` carrying the field path (``shots[0].title``) and
a one-line message; nothing else escapes :func:`load_yaml`. Plain Python: no Dagster.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

MAX_DEPTH = 64
MAX_NODES = 500_000
MAX_NUMBER_CHARS = 100

#: The loader used by default: libyaml's C parser when PyYAML has it.
DEFAULT_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT = _TAG + "str", _TAG + "int", _TAG + "float"
_BOOL, _NULL, _TIMESTAMP = _TAG + "bool", _TAG + "null", _TAG + "timestamp"
_MAP, _SEQ, _MERGE = _TAG + "map", _TAG + "seq", _TAG + "merge"
_SCALAR_TAGS = {_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP}

# Characters YAML admits in a document (YAML 1.1 "printable"): TAB, LF, CR, NEL and the
# printable ranges. Anything else in a *value* came from an escape sequence.
_NOT_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_SHOWN_PARTS = 12


class YamlRefused(Exception):
    """A YAML document that is refused: ``path`` (may be empty) and a one-line ``message``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened to about ``limit`` characters, always one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_key(key: Any) -> str:
    """A mapping key as shown in a field path: plain when simple, else quoted and shortened."""
    if isinstance(key, str) and _SIMPLE_KEY.match(key):
        return key
    return show(key if isinstance(key, str) else str(key), 40)


def format_path(parts: Sequence[int | str | Any]) -> str:
    """``("shots", 0, "dialogue", 1, "end_ms")`` -> ``shots[0].dialogue[1].end_ms``.

    Very deep paths are shortened in the middle (``a[0][0]...[0]``) to stay readable."""
    out = ""
    elided = len(parts) > _MAX_SHOWN_PARTS
    for i, part in enumerate(parts):
        if elided and _MAX_SHOWN_PARTS - 2 <= i < len(parts) - 2:
            if i == _MAX_SHOWN_PARTS - 2:
                out += f"...({len(parts) - _MAX_SHOWN_PARTS} more levels)..."
            continue
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += ("." if out and not out.endswith("...") else "") + format_key(part)
    return out


def bad_character(text: str) -> str | None:
    """Why ``text`` is not acceptable YAML text (a lone surrogate, a control character), or
    None when every character is fine."""
    m = _NOT_PRINTABLE.search(text)
    if m is None:
        return None
    code = ord(m.group())
    if 0xD800 <= code <= 0xDFFF:
        return f"contains U+{code:04X}, a lone surrogate, which is not valid Unicode"
    return f"contains the control character U+{code:04X}, which is not allowed"


class _Frame:
    __slots__ = ("container", "path", "key", "has_key")

    def __init__(self, container: dict[Any, Any] | list[Any], path: tuple[Any, ...]) -> None:
        self.container = container
        self.path = path
        self.key: Any = None
        self.has_key = False


class _Builder:
    def __init__(self, max_depth: int, max_nodes: int) -> None:
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.nodes = 0
        self.stack: list[_Frame] = []
        self.documents = 0
        self.result: Any = None
        self.resolver = Resolver()
        self.constructor = SafeConstructor()

    # -- where we are -----------------------------------------------------------------

    def here(self, *, item: bool = True) -> tuple[Any, ...]:
        """Path of the node about to be read: the mapping key whose value it is, else (with
        ``item``) the next index of the list it goes into, else the container's path."""
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.container, dict):
            return (*top.path, top.key) if top.has_key else top.path
        return (*top.path, len(top.container)) if item else top.path

    def refuse(self, message: str, path: tuple[Any, ...] | None = None) -> YamlRefused:
        return YamlRefused(format_path(self.here() if path is None else path), message)

    # -- events -----------------------------------------------------------------------

    def feed(self, event: Any) -> None:
        kind = type(event)
        if kind is ScalarEvent:
            self._node(event)
            self._add(self._scalar(event))
        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            self._node(event)
            if self.stack and isinstance(self.stack[-1].container, dict) \
                    and not self.stack[-1].has_key:
                raise self.refuse("mapping keys must be plain values (strings or numbers), "
                                  "not mappings or lists")
            if len(self.stack) >= self.max_depth:
                raise self.refuse(f"nested deeper than {self.max_depth} levels")
            want = _MAP if kind is MappingStartEvent else _SEQ
            if event.tag not in (None, "!", want):
                raise self.refuse(f"unsupported YAML tag {show(event.tag)}")
            container: dict[Any, Any] | list[Any] = {} if kind is MappingStartEvent else []
            self.stack.append(_Frame(container, self.here()))
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            frame = self.stack.pop()
            self._add(frame.container)
        elif kind is AliasEvent:
            raise self.refuse(
                f"YAML aliases (*{event.anchor[:40]}) are not supported: anchors and aliases are "
                "refused (they allow circular and exponentially large documents); "
                "write the value out"
            )
        elif kind is DocumentStartEvent:
            self.documents += 1
            if self.documents > 1:
                raise YamlRefused("", "must contain a single YAML document, found a second "
                                      "one ('---')")
        elif kind in (StreamStartEvent, StreamEndEvent, DocumentEndEvent):
            pass
        else:  # pragma: no cover - PyYAML has no other event types
            raise self.refuse(f"unexpected YAML event {kind.__name__}")

    def _node(self, event: Any) -> None:
        if event.anchor is not None:
            raise self.refuse(
                f"YAML anchors (&{event.anchor[:40]}) are not supported: anchors and aliases are "
                "refused (they allow circular and exponentially large documents); "
                "write the value out"
            )
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise self.refuse(f"too many values: the document may hold at most "
                              f"{self.max_nodes} YAML nodes")

    def _add(self, value: Any) -> None:
        if not self.stack:
            self.result = value
            return
        top = self.stack[-1]
        if isinstance(top.container, list):
            top.container.append(value)
        elif not top.has_key:
            try:
                duplicate = value in top.container
            except TypeError:  # unhashable: only mappings/lists are, refused above
                raise self.refuse("mapping keys must be plain values") from None
            if duplicate:
                raise self.refuse(f"duplicate key {show(value)}", (*top.path, value))
            top.key, top.has_key = value, True
        else:
            top.container[top.key] = value
            top.key, top.has_key = None, False

    def _scalar(self, event: Any) -> Any:
        value: str = event.value
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolver.resolve(ScalarNode, value, event.implicit)
        if tag == _STR:
            why = bad_character(value)
            if why is not None:
                raise self.refuse(why)
            return value
        if tag == _MERGE and self.stack and not self.stack[-1].has_key:
            raise self.refuse("YAML merge keys (<<) are not supported; write the keys out")
        if tag not in _SCALAR_TAGS:
            hint = "; quote it if it is text" if event.tag in (None, "!") else ""
            raise self.refuse(f"unsupported YAML value {show(value)} (tag {show(tag)}){hint}")
        if tag in (_INT, _FLOAT):
            digits = value.replace("_", "")
            if len(digits) > MAX_NUMBER_CHARS:
                what = "integer" if tag == _INT else "number"
                raise self.refuse(f"{what} with {len(digits)} characters is too long "
                                  f"(at most {MAX_NUMBER_CHARS})")
        node = ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
        try:
            return self.constructor.yaml_constructors[tag](self.constructor, node)
        except Exception as e:  # bad !!int/!!bool/!!timestamp text, a date out of range
            reason = ""
            if isinstance(e, ValueError | OverflowError) and str(e):
                reason = f" ({str(e).splitlines()[0][:120]})"
            name = tag[len(_TAG):]
            raise self.refuse(f"{show(value)} is not a valid {name}{reason}") from None


def _syntax_message(err: yaml.YAMLError, text: str, c_loader: bool) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is not None and problem:
        return f"invalid YAML: line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if isinstance(err, yaml.reader.ReaderError):
        pos = err.position
        if c_loader:  # libyaml reports a byte offset into the UTF-8 text
            line = text.encode("utf-8", "surrogatepass")[:pos].count(b"\n") + 1
        else:
            line = text[:pos].count("\n") + 1
        char = err.character
        code = f"#x{char:04x}" if isinstance(char, int) else show(char)
        return f"invalid YAML: line {line}: character {code}: {err.reason}"
    first = str(err).strip().splitlines()
    return "invalid YAML: " + (first[0] if first else type(err).__name__)


def load_yaml(
    text: str,
    *,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
    loader: Any = None,
) -> Any:
    """Parse one YAML document into plain Python values (dict, list, str, int, float, bool,
    None, datetime/date), or raise :class:`YamlRefused`. ``loader`` picks the PyYAML loader
    class whose parser is used (default :data:`DEFAULT_LOADER`)."""
    loader = DEFAULT_LOADER if loader is None else loader
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:  # what the YAML reader refuses too; checked here for every loader
        line = text.count("\n", 0, bad.start()) + 1
        raise YamlRefused("", f"invalid YAML: line {line}: character U+{ord(bad.group()):04X} "
                              "is not allowed in a YAML file")
    c_loader = any(k.__name__ == "CParser" for k in getattr(loader, "__mro__", ()))
    builder = _Builder(max_depth, max_nodes)
    try:
        for event in yaml.parse(text, Loader=loader):
            builder.feed(event)
    except YamlRefused:
        raise
    except yaml.YAMLError as e:
        raise YamlRefused(format_path(builder.here(item=False)),
                          _syntax_message(e, text, c_loader)) from None
    except (RecursionError, MemoryError) as e:  # pragma: no cover - limits should prevent it
        raise YamlRefused(format_path(builder.here()),
                          f"document is too complex to read ({type(e).__name__})") from None
    return builder.result
