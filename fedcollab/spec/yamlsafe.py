"""A bounded YAML loader for text we did not write: specs, --set values, tokens files.

``yaml.safe_load`` builds no Python objects beyond plain data, but it still expands
aliases (a 1.4 KB "billion laughs" document costs seconds and tens of MB) and keeps
the last of two equal keys without a word. :func:`safe_load` refuses, before
building anything big:

* anchors and aliases (``&a`` / ``*a``) and merge keys (``<<``): a spec never needs
  them, and refusing them is the only bound on expansion that costs nothing;
* a duplicate key in any mapping (``rounds: 5`` then ``rounds: 50``), naming both
  lines;
* documents over ``max_bytes``, nested deeper than ``max_depth`` or with more than
  ``max_nodes`` nodes; integers longer than Python's digit limit.

Every refusal is a :class:`yaml.MarkedYAMLError`, so callers that already report
``invalid YAML at line N: problem`` for syntax errors report these the same way.

Where PyYAML has LibYAML (its wheels do), the text is parsed in C: one pass over
the parser's events checks the anchors, the depth and the node count, and only a
document that passes is composed and constructed (also in C, duplicate keys
checked as below), five times faster than the pure-Python loader, which stays the
fallback. The job service parses every submitted spec with it.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent
from yaml.nodes import MappingNode, Node

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "YamlRefused", "safe_load"]

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 200_000


class YamlRefused(yaml.MarkedYAMLError):
    """A document the bounded loader will not build (aliases, duplicates, size)."""


def _refuse_anchor(event: Any) -> None:
    """An alias, or a node with an anchor: refused where it is."""
    mark: Any = event.start_mark  # LibYAML's events carry marks of their own type
    if isinstance(event, AliasEvent):
        raise YamlRefused(
            None,
            None,
            f"alias *{event.anchor} refused (anchors and aliases are not allowed here)",
            mark,
        )
    if isinstance(event, NodeEvent) and event.anchor is not None:
        raise YamlRefused(
            None,
            None,
            f"anchor &{event.anchor} refused (anchors and aliases are not allowed here)",
            mark,
        )


class _Budget:
    """The composer's bounds, node by node: no anchor or alias, at most ``max_nodes``
    nodes, nested at most ``max_depth`` deep (the same for LibYAML's events and the
    pure-Python composer)."""

    def __init__(self, max_depth: int, max_nodes: int) -> None:
        self.max_depth, self.max_nodes = max_depth, max_nodes
        self.depth = self.nodes = 0

    def open(self, event: Any) -> bool:
        """Count a node's event; True when it opens a collection (:meth:`close` it)."""
        _refuse_anchor(event)
        mark: Any = event.start_mark  # LibYAML's events carry marks of their own type
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise YamlRefused(None, None, f"more than {self.max_nodes} values", mark)
        if not isinstance(event, CollectionStartEvent):
            return False
        self.depth += 1
        if self.depth > self.max_depth:
            raise YamlRefused(None, None, f"nested deeper than {self.max_depth} levels", mark)
        return True

    def close(self) -> None:
        self.depth -= 1


class _NoDuplicateKeys(yaml.constructor.SafeConstructor):
    """Duplicate and merge keys refused while constructing a mapping."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlRefused(
                    None, None, "merge key '<<' refused (write the keys out)", key_node.start_mark
                )
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeConstructor says so below
                continue
            if first is not None:
                raise YamlRefused(
                    None,
                    None,
                    f"duplicate key {_short(key)} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


class _BoundedLoader(_NoDuplicateKeys, yaml.SafeLoader):
    """PyYAML's pure-Python safe loader with anchors refused, depth and node count
    bounded while composing, and duplicate keys refused while constructing."""

    def __init__(self, stream: str, budget: _Budget) -> None:
        super().__init__(stream)
        self._budget = budget

    def compose_node(self, parent: Any, index: Any) -> Any:
        nested = self._budget.open(self.peek_event())
        try:
            return super().compose_node(parent, index)
        finally:
            if nested:
                self._budget.close()


def _short(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def safe_load(
    text: str, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES
) -> Any:
    """Plain data from YAML text, like ``yaml.safe_load``, within the bounds above.

    Raises:
        yaml.YAMLError: a syntax error, or a :class:`YamlRefused` for a document
            outside the bounds (its ``problem`` says which, ``problem_mark`` where).
    """
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise YamlRefused(
            None, None, f"the document is {size} bytes; the limit is {max_bytes}", None
        )
    try:
        if _CLoader is not None:
            try:
                return _load_in_c(text, max_depth, max_nodes)
            except YamlRefused:
                raise
            except (yaml.YAMLError, UnicodeError):
                pass  # malformed: the pure-Python loader words it as it always has
        loader = _BoundedLoader(text, _Budget(max_depth, max_nodes))
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except ValueError as err:  # int("9" * 5000): Python's digit limit
        raise YamlRefused(
            None, None, f"a value is too large ({str(err).split(':')[0]})", None
        ) from None


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CBoundedLoader(CParser, _NoDuplicateKeys, yaml.resolver.Resolver):
        """LibYAML's parser and composer with the duplicate-key constructor (built
        only after :func:`_check_events` passed the same text)."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _NoDuplicateKeys.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _CLoader: Any = _CBoundedLoader
else:  # pragma: no cover  (PyYAML built without LibYAML)
    _CLoader = None


def _check_events(text: str, max_depth: int, max_nodes: int) -> None:
    """The pure-Python composer's bounds, over LibYAML's events: no anchor or alias,
    at most `max_nodes` nodes, nested at most `max_depth` deep."""
    parser = _CLoader(text)  # its parser part only: events, never a node
    budget = _Budget(max_depth, max_nodes)
    try:
        while parser.check_event():
            event: Any = parser.get_event()
            if isinstance(event, NodeEvent):
                budget.open(event)
            elif isinstance(event, CollectionEndEvent):
                budget.close()
    finally:
        parser.dispose()


def _load_in_c(text: str, max_depth: int, max_nodes: int) -> Any:
    _check_events(text, max_depth, max_nodes)
    loader = _CLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
