"""Flow files: a DAG of agents, parsed from YAML into pydantic models and checked as a whole.

A flow file looks like::

    name: textstats
    description: Normalize a text, count it, and check it is long enough.
    input:
      text: str            # str, int, float, bool, list, dict or any; a trailing ? = optional
    nodes:
      - id: normalize
        agent: text.normalize
        inputs: {text: $input.text}
      - id: stats
        agent: text.stats
        inputs: {text: $normalize.text}
      - id: check
        agent: check.min_words
        inputs: {words: $stats.words}
        params: {min_words: 5}
    output: stats

An input value that starts with ``$`` is a reference: ``$input.FIELD`` (the job's input),
``$NODE.FIELD`` (a field of another node's output) or ``$NODE`` (its whole output). Any other
value is a literal (write ``$$`` for a literal dollar). References make the edges of the DAG;
``after: [NODE, ...]`` adds an edge that carries no data.

Every problem is reported at once, each naming the file, the line and the node. The file's
parts are in spec.py, the checks of the whole in checks.py.
"""

from __future__ import annotations

import graphlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from pantheon.core.agents.base import Agent, AgentRegistry
from pantheon.core.errors import FlowError
from pantheon.core.flows.checks import (
    JSON_TYPES,
    YamlPlaces,
    build_input_model,
    check_ref,
    json_compatible,
    json_type,
    nested_refs,
    stable_topo,
)
from pantheon.core.flows.spec import FlowSpec, NodeSpec, Ref, unescape

__all__ = ["Flow", "FlowSpec", "NodeSpec", "Ref", "load_flow", "parse_flow"]


@dataclass
class Flow:
    """A checked flow, ready to run."""

    spec: FlowSpec
    agents: dict[str, type[Agent]]
    """Node id -> agent class."""
    deps: dict[str, set[str]]
    """Node id -> the node ids it waits for."""
    order: list[str]
    """A topological order of the node ids."""
    source: str = "<string>"
    text: str = ""
    sha256: str = ""
    input_model: type[BaseModel] = field(default=BaseModel)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def output_node(self) -> str:
        return self.spec.output or self.spec.nodes[-1].id

    def node(self, node_id: str) -> NodeSpec:
        for n in self.spec.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def first_agent(self) -> str:
        return self.agents[self.order[0]].name

    def validate_job_input(self, data: Any) -> dict[str, Any]:
        """Check a job's input against the flow's ``input`` section; raise FlowError if it fails."""
        if not isinstance(data, dict):
            raise FlowError(
                f"flow {self.name!r}: a job's input must be a JSON object, not {data!r}"
            )
        try:
            model = self.input_model.model_validate(data)
        except ValidationError as exc:
            problems = [
                f"input.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            ]
            raise FlowError(
                f"flow {self.name!r}: the job's input does not fit: " + "; ".join(problems),
                problems=problems,
            ) from None
        return model.model_dump(mode="json")

    def resolve_inputs(
        self, node_id: str, job_input: dict[str, Any], outputs: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """The input of a node, with every reference replaced by its value."""

        def resolve(value: Any) -> Any:
            ref = Ref.parse(value)
            if ref is not None:
                source = job_input if ref.source == "input" else outputs[ref.source]
                return source if ref.field is None else source.get(ref.field)
            if isinstance(value, list):
                return [resolve(v) for v in value]
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            return unescape(value)

        return {k: resolve(v) for k, v in self.node(node_id).inputs.items()}


def parse_flow(text: str, registry: AgentRegistry, *, source: str = "<string>") -> Flow:
    """Parse and check a flow; raise FlowError listing every problem with file, line and node."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise FlowError(f"{where}: malformed YAML: {problem}") from None
    places = YamlPlaces(root, source)
    if not isinstance(data, dict):
        raise FlowError(f"{source}: a flow file must be a YAML mapping with 'name' and 'nodes'")

    try:
        spec = FlowSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err["loc"]
            where = places.at(*loc)
            node = ""
            if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
                raw_nodes = data.get("nodes") or []
                raw = raw_nodes[loc[1]] if loc[1] < len(raw_nodes) else None
                node_id = raw.get("id") if isinstance(raw, dict) else None
                node = f" node {node_id!r}:" if node_id else f" node #{loc[1] + 1}:"
            field_name = ".".join(str(p) for p in loc)
            problems.append(f"{where}:{node} {field_name}: {err['msg']}")
        raise FlowError(
            f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems), problems=problems
        ) from None

    problems: list[str] = []
    input_model = build_input_model(spec.name, spec.input, places, problems)
    input_types = {k: JSON_TYPES.get(v.rstrip("?")) for k, v in spec.input.items()}

    ids: dict[str, int] = {}
    for i, node in enumerate(spec.nodes):
        if node.id == "input":
            problems.append(f"{places.at('nodes', i, 'id')}: node 'input': 'input' is reserved")
        if node.id in ids:
            problems.append(
                f"{places.at('nodes', i, 'id')}: node {node.id!r}: duplicate id "
                f"(first at line {places.line('nodes', ids[node.id], 'id')})"
            )
        else:
            ids[node.id] = i

    agents: dict[str, type[Agent]] = {}
    duplicates = {i for i, node in enumerate(spec.nodes) if ids[node.id] != i}
    for i, node in enumerate(spec.nodes):
        if i in duplicates:
            continue
        if node.agent not in registry:
            problems.append(
                f"{places.at('nodes', i, 'agent')}: node {node.id!r}: unknown agent "
                f"{node.agent!r} ({registry.suggest(node.agent)})"
            )
        else:
            agents.setdefault(node.id, registry.get(node.agent))

    deps: dict[str, set[str]] = {n.id: set() for n in spec.nodes}
    for i, node in enumerate(spec.nodes):
        if i in duplicates:
            continue
        agent = agents.get(node.id)
        here = f"node {node.id!r}"
        if agent is not None:
            try:
                agent.Params.model_validate(node.params)
            except ValidationError as exc:
                for err in exc.errors():
                    key = err["loc"][0] if err["loc"] else None
                    at = places.at("nodes", i, "params", key) if key else places.at("nodes", i)
                    name = ".".join(str(p) for p in err["loc"]) or "params"
                    problems.append(f"{at}: {here}: params.{name}: {err['msg']}")
        fields = agent.Input.model_fields if agent is not None else {}
        if agent is not None:
            for key in node.inputs:
                if key not in fields:
                    accepts = ", ".join(fields) or "nothing"
                    problems.append(
                        f"{places.at('nodes', i, 'inputs', key)}: {here}: unknown input {key!r} "
                        f"for agent {agent.name!r} (it accepts: {accepts})"
                    )
            for key, info in fields.items():
                if info.is_required() and key not in node.inputs:
                    problems.append(
                        f"{places.at('nodes', i, 'inputs')}: {here}: missing input {key!r} "
                        f"required by agent {agent.name!r}"
                    )
        for key, value in node.inputs.items():
            at = places.at("nodes", i, "inputs", key)
            want = fields.get(key)
            ref = Ref.parse(value)
            if ref is None:
                if want is not None:
                    try:
                        TypeAdapter(want.annotation).validate_python(unescape(value))
                    except ValidationError as exc:
                        msg = exc.errors()[0]["msg"]
                        problems.append(f"{at}: {here}: input {key!r}: wrong type: {msg}")
                for nested in nested_refs(value):
                    check_ref(nested, node.id, at, here, ids, agents, spec, deps, problems)
                continue
            src_type = check_ref(ref, node.id, at, here, ids, agents, spec, deps, problems)
            if ref.source == "input" and ref.field:
                src_type = input_types.get(ref.field)
            if want is not None and not json_compatible(src_type, json_type(want.annotation)):
                problems.append(
                    f"{at}: {here}: input {key!r}: wrong type: {ref} is {src_type} but agent "
                    f"{agent.name if agent else '?'!r} wants {json_type(want.annotation)}"
                )
        for j, dep in enumerate(node.after):
            if dep not in ids:
                problems.append(
                    f"{places.at('nodes', i, 'after', j)}: {here}: after unknown node {dep!r}"
                )
            else:
                deps[node.id].add(dep)

    if spec.output is not None and spec.output not in ids:
        problems.append(f"{places.at('output')}: output names unknown node {spec.output!r}")

    order: list[str] = []
    try:
        order = list(graphlib.TopologicalSorter(deps).static_order())
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        first = cycle[0]
        line = places.at("nodes", ids.get(first, 0), "id")
        problems.append(f"{line}: node {first!r}: cycle: " + " -> ".join(cycle))

    if problems:
        raise FlowError(
            f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems), problems=problems
        )
    # keep the file's own order where the DAG allows it, so runs read top to bottom
    position = {n.id: i for i, n in enumerate(spec.nodes)}
    order = stable_topo(deps, position)
    return Flow(
        spec=spec,
        agents=agents,
        deps=deps,
        order=order,
        source=source,
        text=text,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        input_model=input_model,
    )


def load_flow(path: Path | str, registry: AgentRegistry) -> Flow:
    """Read and check a flow file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowError(f"{path}: no such flow file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowError(f"{path}: cannot read the flow file: {exc}") from None
    return parse_flow(text, registry, source=str(path))


def packaged_flows_dir() -> Path:
    """The flows shipped with Pantheon (``pantheon.flows``)."""
    from importlib import resources

    return Path(str(resources.files("pantheon.flows")))


def locate_flow(name_or_path: str, *, search: list[Path] | None = None) -> Path:
    """A flow file by path, or by name in ``./flows`` and then in the flows Pantheon ships."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in name_or_path:
        return path
    folders = [*(search or []), Path("flows"), packaged_flows_dir()]
    for folder in folders:
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.y*ml")})
    raise FlowError(
        f"no flow named {name_or_path!r} (looked in {', '.join(str(f) for f in folders)})",
        hint=f"known flows: {', '.join(known)}" if known else "pass the path of a flow file",
    )
