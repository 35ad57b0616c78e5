"""Flow files: parsed into models, every problem reported with file, line and node."""

from __future__ import annotations

from pathlib import Path

import pytest

from pantheon.core import FlowError, load_flow, parse_flow
from pantheon.core.flows.flow import packaged_flows_dir

GOOD = """\
name: textstats
input:
  text: str
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
    params: {min_words: 3}
output: stats
"""


def problems_of(text: str, registry) -> list[str]:
    with pytest.raises(FlowError) as info:
        parse_flow(text, registry, source="f.yaml")
    return info.value.problems


def test_a_good_flow_parses_into_its_dag(registry):
    flow = parse_flow(GOOD, registry, source="f.yaml")
    assert flow.name == "textstats"
    assert flow.order == ["normalize", "stats", "check"]
    assert flow.deps == {"normalize": set(), "stats": {"normalize"}, "check": {"stats"}}
    assert flow.output_node == "stats"
    assert flow.first_agent() == "text.normalize"
    assert len(flow.sha256) == 64


def test_inputs_resolve_references_and_keep_literals(registry):
    flow = parse_flow(GOOD, registry)
    outputs = {"normalize": {"text": "a b"}, "stats": {"words": 2}}
    assert flow.resolve_inputs("stats", {"text": "A  B"}, outputs) == {"text": "a b"}
    assert flow.resolve_inputs("check", {}, outputs) == {"words": 2}


def test_malformed_yaml_names_file_line_and_column(registry):
    text = "name: x\nnodes:\n  - id: a\n    agent: [unclosed\n"
    with pytest.raises(FlowError) as info:
        parse_flow(text, registry, source="broken.yaml")
    assert "broken.yaml:" in str(info.value)
    assert "malformed YAML" in str(info.value)


def test_unknown_agent_names_line_node_and_suggests(registry):
    text = GOOD.replace("agent: text.stats", "agent: text.stat")
    [problem] = problems_of(text, registry)
    assert problem.startswith("f.yaml:9:")
    assert "node 'stats'" in problem
    assert "unknown agent 'text.stat'" in problem
    assert "did you mean 'text.stats'" in problem


def test_duplicate_id_names_both_lines(registry):
    text = GOOD.replace("id: check", "id: stats")
    [problem] = problems_of(text, registry)
    assert problem == "f.yaml:11: node 'stats': duplicate id (first at line 8)"


def test_a_cycle_is_named(registry):
    text = """\
name: loop
nodes:
  - id: a
    agent: text.normalize
    inputs: {text: $b.text}
  - id: b
    agent: text.normalize
    inputs: {text: $a.text}
"""
    [problem] = problems_of(text, registry)
    assert "cycle" in problem
    assert "a" in problem and "b" in problem


def test_unknown_inputs_are_each_reported(registry):
    text = """\
name: bad
input:
  text: str
nodes:
  - id: a
    agent: text.normalize
    inputs: {text: $input.body, colour: red}
  - id: b
    agent: text.stats
    inputs: {text: $ghost.text}
  - id: c
    agent: check.min_words
    inputs: {words: $b.sentences}
"""
    found = "\n".join(problems_of(text, registry))
    assert "unknown input '$input.body'" in found
    assert "unknown input 'colour' for agent 'text.normalize'" in found
    assert "refers to unknown node 'ghost'" in found
    assert "has no output field 'sentences'" in found
    assert "f.yaml:7:" in found and "f.yaml:10:" in found and "f.yaml:13:" in found


def test_wrong_types_are_reported(registry):
    text = """\
name: types
nodes:
  - id: a
    agent: text.stats
    inputs: {text: 42}
  - id: b
    agent: text.normalize
    inputs: {text: $a.words}
  - id: c
    agent: check.min_words
    inputs: {words: $a.words}
    params: {min_words: lots}
"""
    found = "\n".join(problems_of(text, registry))
    assert "node 'a': input 'text': wrong type" in found
    assert "node 'b': input 'text': wrong type: $a.words is integer" in found
    assert "node 'c': params.min_words" in found


def test_missing_required_input_and_bad_structure(registry):
    text = "name: s\nnodes:\n  - id: a\n    agent: text.stats\n"
    [problem] = problems_of(text, registry)
    assert "missing input 'text' required by agent 'text.stats'" in problem
    found = problems_of(
        "name: s\nnodes:\n  - id: 9bad\n    agent: text.stats\n    x: 1\n", registry
    )
    joined = "\n".join(found)
    assert "nodes.0.id" in joined and "nodes.0.x" in joined and "f.yaml:5:" in joined
    with pytest.raises(FlowError, match="must be a YAML mapping"):
        parse_flow("- just\n- a list\n", registry, source="f.yaml")


def test_job_input_is_checked_against_the_flow(registry):
    flow = parse_flow(GOOD, registry)
    assert flow.validate_job_input({"text": "hi"}) == {"text": "hi"}
    with pytest.raises(FlowError, match=r"input\.text: Field required"):
        flow.validate_job_input({})
    with pytest.raises(FlowError, match="must be a JSON object"):
        flow.validate_job_input(["text"])


def test_load_flow_reports_a_missing_file(registry, tmp_path: Path):
    with pytest.raises(FlowError, match="no such flow file"):
        load_flow(tmp_path / "nope.yaml", registry)


def test_every_shipped_flow_checks(registry):
    shipped = sorted(packaged_flows_dir().glob("*.yaml"))
    assert shipped, "Pantheon ships flows"
    for path in shipped:
        assert load_flow(path, registry).name == path.stem
