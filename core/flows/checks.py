"""The checks of a flow as a whole, used by :func:`~pantheon.core.flows.flow.parse_flow`:
where in the YAML each part is (for the problems' line numbers), the job input's types, the
references between nodes and their types, and a stable topological order.
"""

from __future__ import annotations

import graphlib
from typing import Any

import yaml
from pydantic import ConfigDict, TypeAdapter, create_model

from pantheon.core.agents.base import Agent
from pantheon.core.flows.spec import FlowSpec, Ref

__all__ = [
    "JSON_TYPES",
    "YamlPlaces",
    "build_input_model",
    "check_ref",
    "json_compatible",
    "json_type",
    "nested_refs",
    "stable_topo",
]

_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": list,
    "dict": dict,
    "any": Any,
}
JSON_TYPES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "list": "array",
    "dict": "object",
}
"""A flow input's type name -> the JSON schema type of its values."""


class YamlPlaces:
    """Line numbers of the parts of a YAML document, by path of keys and indices."""

    def __init__(self, root: yaml.Node | None, source: str) -> None:
        self.root = root
        self.source = source

    def line(self, *path: Any) -> int | None:
        """The line of the part at ``path`` (or of the nearest part above it that exists)."""
        node = self.root
        best = node.start_mark.line + 1 if node is not None else None
        for key in path:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                        node = v
                        best = k.start_mark.line + 1
                        break
                else:
                    return best
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
                if key >= len(node.value):
                    return best
                node = node.value[key]
                best = node.start_mark.line + 1
            else:
                return best
        return best

    def at(self, *path: Any) -> str:
        """``source:line`` of the part at ``path``, for a problem's place."""
        line = self.line(*path)
        return f"{self.source}:{line}" if line else self.source


def json_type(annotation: Any) -> str | None:
    """The JSON schema type of a field's annotation (None when it has no single one)."""
    try:
        schema = TypeAdapter(annotation).json_schema()
    except Exception:
        return None
    t = schema.get("type")
    return t if isinstance(t, str) else None


def json_compatible(src: str | None, dst: str | None) -> bool:
    """Whether a value of JSON type ``src`` fits a field of type ``dst`` (None: unknown, fits)."""
    if src is None or dst is None or src == dst:
        return True
    return src == "integer" and dst == "number"


def build_input_model(
    flow_name: str, spec: dict[str, str], places: YamlPlaces, problems: list[str]
):
    """The pydantic model of a flow's job input; an unknown type is a problem, and its field is
    left out."""
    fields: dict[str, Any] = {}
    for name, type_name in spec.items():
        optional = type_name.endswith("?")
        base = type_name.rstrip("?").strip()
        if base not in _TYPES:
            problems.append(
                f"{places.at('input', name)}: input {name!r} has unknown type {type_name!r} "
                f"(use one of {', '.join(_TYPES)}, with ? for optional)"
            )
            continue
        tp = _TYPES[base]
        fields[name] = (tp | None, None) if optional else (tp, ...)
    return create_model(f"{flow_name}_input", __config__=ConfigDict(extra="allow"), **fields)


def stable_topo(deps: dict[str, set[str]], position: dict[str, int]) -> list[str]:
    """The nodes in an order where each comes after what it depends on; ties keep the order
    of the file (``position``)."""
    sorter = graphlib.TopologicalSorter(deps)
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def nested_refs(value: Any) -> list[Ref]:
    """References inside a literal list or mapping."""
    found: list[Ref] = []
    items = value if isinstance(value, list) else value.values() if isinstance(value, dict) else []
    for item in items:
        ref = Ref.parse(item)
        found.extend([ref] if ref is not None else nested_refs(item))
    return found


def check_ref(
    ref: Ref,
    node_id: str,
    at: str,
    here: str,
    ids: dict[str, int],
    agents: dict[str, type[Agent]],
    spec: FlowSpec,
    deps: dict[str, set[str]],
    problems: list[str],
) -> str | None:
    """Check one reference, record its edge, and return the JSON type of what it points at."""
    if ref.source == "input":
        if ref.field and spec.input and ref.field not in spec.input:
            problems.append(
                f"{at}: {here}: unknown input {str(ref)!r}: the flow's input has "
                f"{', '.join(spec.input) or 'no fields'}"
            )
        return None
    if ref.source not in ids:
        problems.append(f"{at}: {here}: {ref} refers to unknown node {ref.source!r}")
        return None
    if ref.source == node_id:
        problems.append(f"{at}: {here}: {ref} refers to the node itself")
        return None
    deps[node_id].add(ref.source)
    src_agent = agents.get(ref.source)
    if src_agent is None or ref.field is None:
        return "object" if ref.field is None else None
    out_fields = src_agent.Output.model_fields
    if ref.field not in out_fields:
        problems.append(
            f"{at}: {here}: {ref}: agent {src_agent.name!r} has no output field {ref.field!r} "
            f"(it returns: {', '.join(out_fields)})"
        )
        return None
    return json_type(out_fields[ref.field].annotation)
