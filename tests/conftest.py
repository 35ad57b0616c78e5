"""Shared fixtures: a registry, an artifacts directory, a real agent plugin, the frozen night, a
docs repository and the test model. The plain helpers they and the tests use are in helpers.py."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from helpers import git

from pantheon.core import AgentRegistry, default_registry

PLUGIN_SOURCE = '''
"""A test plugin: agents that count their executions in a file, installed through the
``pantheon.agents`` entry-point group like any user's package."""

import asyncio
import os
from typing import Any

from pydantic import BaseModel

from pantheon.core import Agent, NodeContext


class Step(Agent):
    name = "count.step"
    description = "Appends 'run node pid' to $PANTHEON_COUNT_FILE, waits, returns n + 1."

    class Input(BaseModel):
        n: int = 0

    class Output(BaseModel):
        n: int

    class Params(BaseModel):
        delay_s: float = 0.0
        fail_on: int | None = None

    async def run(self, input, ctx: NodeContext):
        path = os.environ.get("PANTHEON_COUNT_FILE")
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(fd, f"{ctx.run_id} {ctx.node} {os.getpid()}\\n".encode())
            os.close(fd)
        if ctx.params.delay_s:
            await asyncio.sleep(ctx.params.delay_s)
        if ctx.params.fail_on is not None and input.n == ctx.params.fail_on:
            raise RuntimeError(f"n reached {input.n}")
        return self.Output(n=input.n + 1)


AGENTS = [Step]
'''


def pytest_configure(config: pytest.Config) -> None:
    """Where bubblewrap does not work, the tests' code runs unconfined, as ``--no-sandbox``
    would have it (tests/test_sandbox.py says it skipped the sandbox's own tests)."""
    from pantheon.core.work.sandbox import SANDBOX_ENV, Sandbox

    if not Sandbox.probe().active:
        os.environ.setdefault(SANDBOX_ENV, "off")


def pytest_report_header(config: pytest.Config) -> str:
    from pantheon.core.work.sandbox import SANDBOX_ENV, Sandbox, unconfined_allowed

    status = Sandbox.probe()
    if not status.active:
        return f"sandbox: none ({status.reason}): the code under test runs unconfined"
    if unconfined_allowed():
        return f"sandbox: off ({SANDBOX_ENV}=off): the code under test runs unconfined"
    return f"sandbox: {status.reason}"


@pytest.fixture
def registry() -> AgentRegistry:
    """Pantheon's own agents, no plugins."""
    return default_registry(plugins=False)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


@pytest.fixture
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an installed-looking agent plugin (package + dist-info with entry point)."""
    root = tmp_path_factory.mktemp("plugin")
    pkg = root / "pantheon_countplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    info = root / "pantheon_countplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pantheon-countplugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[pantheon.agents]\ncount = pantheon_countplugin:AGENTS\n"
    )
    return root


@pytest.fixture
def with_plugin(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the plugin importable and discoverable in this process and its children."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")]))
    )
    return plugin_dir


@pytest.fixture(scope="session")
def frozen_night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The frozen textstats night of ``night_fixture``, built once."""
    from night_fixture import make_night

    return make_night(tmp_path_factory.mktemp("night") / "artifacts")


@pytest.fixture
def night(frozen_night: Path, tmp_path: Path) -> Path:
    """A private copy of the frozen night (tests write control.json and break files). Modules
    with a night of their own (a docops night on a real repository) define their own."""
    import shutil

    dest = tmp_path / "artifacts"
    shutil.copytree(frozen_night, dest)
    return dest


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository of documentation pages on ``main`` (the docs of the demo corpus that
    are long enough to publish), for the docops flow and the morning review."""
    from pantheon.core.run.demo import demo_inputs

    root = tmp_path / "docs-repo"
    (root / "docs").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "dev@example.org")  # whom pantheon's commits are by
    git(root, "config", "user.name", "Dev")
    for i, doc in enumerate(d for d in demo_inputs() if len(d["text"].split()) >= 40):
        (root / "docs" / f"doc{i}.md").write_text(doc["text"])
    git(root, "add", "-A")
    git(root, "commit", "-qm", "docs")
    return root


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2, the test model, pulled once (a test that trains it skips where peft is not
    installed)."""
    pytest.importorskip("peft")
    from pantheon.core.model.files import TEST_MODEL, ModelStore

    return ModelStore().pull(TEST_MODEL)
