"""Shared fixtures: a registry, an artifacts directory, flow files, a real agent plugin, and a
scripted model server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from pantheon.core import AgentRegistry, default_registry
from pantheon.core.model.client import LLMClient

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

STEP_FLOW = """\
name: steps
description: three counting steps
input:
  n: int
nodes:
  - id: a
    agent: count.step
    inputs: {n: $input.n}
    params: {delay_s: DELAY}
  - id: b
    agent: count.step
    inputs: {n: $a.n}
    params: {delay_s: DELAY}
  - id: c
    agent: count.step
    inputs: {n: $b.n}
    params: {delay_s: DELAY}
output: c
"""


def step_flow(delay_s: float = 0.0) -> str:
    return STEP_FLOW.replace("DELAY", str(delay_s))


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


async def until(
    check: Callable[[], object], timeout_s: float = 20.0, every_s: float = 0.02
) -> None:
    """Wait, in the event loop, until ``check()`` is true (a test waits on a condition, never a
    fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout_s} s")
        await asyncio.sleep(every_s)


def pantheon(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the real ``pantheon`` command (through this interpreter)."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run([sys.executable, "-m", "pantheon.console", *args], **kwargs)


def pantheon_popen(*args: str, **kwargs) -> subprocess.Popen[str]:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    return subprocess.Popen([sys.executable, "-m", "pantheon.console", *args], **kwargs)


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

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("config", "user.email", "dev@example.org")
    git("config", "user.name", "Dev")
    for i, doc in enumerate(d for d in demo_inputs() if len(d["text"].split()) >= 40):
        (root / "docs" / f"doc{i}.md").write_text(doc["text"])
    git("add", "-A")
    git("commit", "-qm", "docs")
    return root


# -- a scripted model server -----------------------------------------------------------------


def chat_response(
    contents: Sequence[str],
    *,
    usage: dict[str, int] | None = None,
    finish_reason: str | None = None,
    model: str | None = None,
) -> httpx.Response:
    """A chat completion with one choice per text of ``contents``."""
    choice: dict[str, Any] = {"finish_reason": finish_reason} if finish_reason else {}
    data: dict[str, Any] = {
        "choices": [
            {"index": i, "message": {"content": c}, **choice} for i, c in enumerate(contents)
        ]
    }
    if usage is not None:
        data["usage"] = usage
    if model is not None:
        data["model"] = model
    return httpx.Response(200, json=data)


def scripted_model(
    answer: Callable[[dict[str, Any]], str | Sequence[str] | httpx.Response],
    *,
    usage: dict[str, int] | None = None,
    finish_reason: str | None = None,
    model: str | None = None,
    tokens: Callable[[str], list[Any]] | None = None,
    context: int | None = None,
) -> tuple[LLMClient, httpx.AsyncClient]:
    """A model server over ``httpx.MockTransport``, and a client of it (no retries).

    ``/health`` answers ok; ``/props`` says the context a request holds (``context``, as
    llama-server does), or 404; ``/tokenize`` answers ``tokens(content)`` (the words, unless told);
    each chat request's JSON body goes to ``answer``, which returns the reply's text, a list of
    texts (one choice each), or a response of its own. The caller closes the ``httpx`` client.
    """

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        if request.url.path == "/props":
            if context is None:
                return httpx.Response(404, json={"error": "not found"})
            return httpx.Response(200, json={"default_generation_settings": {"n_ctx": context}})
        body = json.loads(request.content)
        if request.url.path == "/tokenize":
            words = tokens(body["content"]) if tokens else body["content"].split()
            return httpx.Response(200, json={"tokens": words})
        out = answer(body)
        if isinstance(out, httpx.Response):
            return out
        contents = [out] if isinstance(out, str) else list(out)
        return chat_response(contents, usage=usage, finish_reason=finish_reason, model=model)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return LLMClient("http://127.0.0.1:9", http=http, retries=0), http
