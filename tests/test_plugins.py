"""Agents from a user's package, through the ``pantheon.agents`` entry-point group."""

from __future__ import annotations

import pytest
from helpers import pantheon
from pydantic import BaseModel

from pantheon.core import Agent, AgentError, AgentRegistry, default_registry


def test_an_installed_plugin_adds_its_agents(with_plugin):
    registry = default_registry()
    assert "count.step" in registry
    assert "pantheon_countplugin:AGENTS" in registry.origin("count.step")
    assert "text.stats" in registry


def test_pantheon_agents_lists_builtin_and_plugin_agents(with_plugin):
    out = pantheon("agents")
    assert out.returncode == 0, out.stderr
    assert "count.step" in out.stdout and "check.min_words" in out.stdout
    assert "[gate]" in out.stdout


def test_a_broken_plugin_is_reported_not_fatal(tmp_path, monkeypatch):
    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pantheon.agents]\nbroken = no_such_module:AGENTS\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = default_registry()
    assert "text.stats" in registry
    assert any("no_such_module" in e for e in registry.load_errors)


def test_agent_definitions_are_checked():
    registry = AgentRegistry()

    class NoRun(Agent):
        name = "x.norun"

        class Input(BaseModel):
            a: int

        class Output(BaseModel):
            b: int

    with pytest.raises(AgentError, match="does not implement run"):
        registry.register(NoRun)

    class GateWithoutPassed(Agent):
        name = "x.gate"
        gate = True

        class Input(BaseModel):
            a: int

        class Output(BaseModel):
            b: int

        async def run(self, input, ctx):
            return self.Output(b=1)

    with pytest.raises(AgentError, match="no 'passed' field"):
        registry.register(GateWithoutPassed)

    class Good(GateWithoutPassed):
        class Output(BaseModel):
            passed: bool

    Good.name = "text.stats"
    builtin = default_registry(plugins=False)
    with pytest.raises(AgentError, match="clashes"):
        builtin.register(Good, origin="mine")
    with pytest.raises(AgentError, match="unknown agent 'nope'"):
        builtin.get("nope")
