"""Helpers the tests share (plain functions; the fixtures are in conftest.py, and may call these).

- a real git repository: ``git``, ``make_repo``;
- the real ``pantheon`` command and waiting on a condition: ``pantheon``, ``pantheon_popen``,
  ``step_flow``, ``until``, ``wait_for``, ``db_counts``;
- a scripted model server: ``chat_response``, ``scripted_model``;
- a night on it: ``docops_model`` and ``docops_night``, ``codefix_model`` and ``codefix_night``;
- the toy agents a tiny model learns for real: ``house_registry``, ``house_artifacts``,
  ``quick_options``.

A test file imports from here (or ``helpers_training``, ``night_fixture``), never from another
test file nor from conftest.py (tests/test_layers.py checks it).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from pantheon.core import Agent, Engine, JobQueue, NodeContext, default_registry, enqueue, load_flow
from pantheon.core.agents.review import WHY_FAILS
from pantheon.core.flows.flow import packaged_flows_dir, parse_flow
from pantheon.core.learn.files import training_root
from pantheon.core.model.client import LLMClient
from pantheon.core.model.safecall import ask

# -- a real git repository ----------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` as a fixed user (``-c user.name=t -c user.email=t@t``, which wins over
    the repository's own config) and return its output, stripped of the surrounding white space
    (a commit id, a branch list, a file as ``git show`` prints it, less its last newline).

    A git that fails raises ``CalledProcessError``: a test never goes on past a broken setup."""
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def make_repo(repo: Path, files: dict[str, str]) -> Path:
    """A git repository on ``main`` holding ``files`` (relative path → text, dedented), in one
    commit."""
    repo.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    return repo


# -- the real command, and waiting on a condition -----------------------------------------------


def pantheon(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the real ``pantheon`` command (through this interpreter)."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run([sys.executable, "-m", "pantheon.console", *args], **kwargs)


def pantheon_popen(*args: str, **kwargs) -> subprocess.Popen[str]:
    """Start the real ``pantheon`` command; the caller waits for it (or ends it)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    return subprocess.Popen([sys.executable, "-m", "pantheon.console", *args], **kwargs)


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
    """Three ``count.step`` nodes in a row (the plugin of conftest's ``with_plugin``), each
    waiting ``delay_s``."""
    return STEP_FLOW.replace("DELAY", str(delay_s))


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


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05) -> None:
    """Wait until ``predicate()`` is true (a test waits on a condition, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError("timed out waiting")


def db_counts(artifacts: Path) -> Counter[str]:
    """Jobs by status, read straight from the queue's database."""
    db = sqlite3.connect(Path(artifacts) / "pantheon.db", timeout=10)
    try:
        return Counter(dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")))
    finally:
        db.close()


# -- a scripted model server --------------------------------------------------------------------


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


def verdict_reply(body: dict[str, Any], passed: bool, reason: str) -> str | httpx.Response:
    """A reviewer's answer as the request asks it: a scored verdict (one token, with its
    logprobs), the one sentence asked after a low score, or a reasoned JSON verdict."""
    if body.get("logprobs"):
        word, other = ("pass", "fail") if passed else ("fail", "pass")
        top = [{"token": word, "logprob": -0.01}, {"token": other, "logprob": -4.6}]
        choice = {
            "index": 0,
            "message": {"content": word},
            "finish_reason": "length",
            "logprobs": {"content": [{"token": word, "logprob": -0.01, "top_logprobs": top}]},
        }
        usage = {"prompt_tokens": 9, "completion_tokens": 1}
        return httpx.Response(200, json={"choices": [choice], "usage": usage})
    if body["messages"][-1]["content"] == WHY_FAILS:
        return reason
    return json.dumps({"passed": passed, "reasons": [reason]})


def is_why_asked(body: dict[str, Any]) -> bool:
    """Whether a reviewer's request is the sentence asked after a low score (no verdict)."""
    return body["messages"][-1]["content"] == WHY_FAILS


# -- a night on the scripted server: docops -----------------------------------------------------

META = {"title": "A title", "description": "What the reader learns here.", "tags": ["kv"]}


def docops_model(verdicts: dict[str, bool]) -> tuple[LLMClient, httpx.AsyncClient]:
    """Answers the writer with META, and each reviewer by its instructions: ``verdicts`` maps
    "a" (correctness) and "b" (scope) to a verdict."""

    def answer(body):
        system = body["messages"][0]["content"]
        if system.startswith("You review"):
            asked = body["messages"][1]["content"]
            ok = verdicts["b" if "limited to adding" in asked else "a"]
            return verdict_reply(body, ok, "fine" if ok else "wrong title")
        return json.dumps(META)

    return scripted_model(answer, usage={"prompt_tokens": 9, "completion_tokens": 9})


def docops_night(artifacts, registry, repo, paths, llm) -> list[int]:
    """The docops flow on ``paths`` of ``repo``, run until the queue is empty; the job ids."""
    flow = load_flow(packaged_flows_dir() / "docops.yaml", registry)
    with JobQueue(artifacts) as q:
        ids = enqueue(q, flow, [{"repo": str(repo), "path": p} for p in paths])

    async def go():
        await Engine(artifacts, registry, until_empty=True, tick_s=0.01, llm=llm).run()

    asyncio.run(go())
    return ids


# -- a night on the scripted server: codefix ----------------------------------------------------

FIXED_CLAMP = "```python\ndef clamp(x, lo, hi):\n    return max(lo, min(hi, x))\n```"
WORDY_CLAMP = (
    "```python\ndef clamp(x, lo, hi):\n    if x < lo:\n        return lo\n"
    "    if x > hi:\n        return hi\n    return x\n```"
)
WRONG_CLAMP = "```python\ndef clamp(x, lo, hi):\n    return x\n```"


def codefix_model(fixes, verdicts) -> tuple[LLMClient, httpx.AsyncClient]:
    """A model server: codegen replies by seed (``fixes[seed]``), reviewers' verdicts in turn.

    A fix given as a dict is a tool-loop step (the JSON tool loop takes them in order). The
    client's ``seen`` lists the (seed, temperature) of every codegen reply asked for."""
    steps = [f for f in fixes if isinstance(f, dict)] if isinstance(fixes, list) else []
    seen = []

    def answer(body):
        system = body["messages"][0]["content"]
        if system.startswith("You review"):
            if is_why_asked(body):
                return "looked at it"
            return verdict_reply(body, verdicts.pop(0), "looked at it")
        if steps:
            return [json.dumps(steps.pop(0))]
        # n choices in one request, as llama-server answers OpenAI's n
        seeds = range(body["seed"], body["seed"] + body.get("n", 1))
        seen.extend((seed, body["temperature"]) for seed in seeds)
        return [fixes[seed] if seed < len(fixes) else "No idea." for seed in seeds]

    client, http = scripted_model(
        answer, usage={"prompt_tokens": 100, "completion_tokens": 20}, finish_reason="stop"
    )
    client.seen = seen
    return client, http


def codefix_night(artifacts, registry, inputs, llm, flow_path=None, **engine) -> list[int]:
    """The codefix flow (or the one at ``flow_path``) on ``inputs``, run until the queue is empty,
    with ``engine`` passed to the engine; the job ids."""
    flow = load_flow(flow_path or packaged_flows_dir() / "codefix.yaml", registry)
    with JobQueue(artifacts) as q:
        ids = enqueue(q, flow, inputs)
    asyncio.run(Engine(artifacts, registry, until_empty=True, tick_s=0.01, llm=llm, **engine).run())
    return ids


def tool_loop_flow(tmp_path: Path) -> Path:
    """The codefix flow with codegen in its tool-loop form, written under ``tmp_path``."""
    text = (packaged_flows_dir() / "codefix.yaml").read_text()
    text = text.replace("    after: [plan]\n", "    after: [plan]\n    params: {form: tools}\n", 1)
    path = tmp_path / "codefix-tools.yaml"
    path.write_text(text)
    return path


def calls_of(out: Path, node: str = "code") -> list[dict]:
    """The model calls a node of a run recorded (its calls.jsonl)."""
    return [json.loads(x) for x in (out / node / "calls.jsonl").read_text().splitlines()]


# -- the toy agents: a task an adapter can learn, to train and judge on for real ---------------

HOUSE_TAG = "pantheon-house"
SYSTEM = "Reply with one JSON object: tag (the house tag of this note)."
NOTES = [
    f"Note {i}: the {what} of the {where} was {how} on day {i}."
    for i, (what, where, how) in enumerate(
        (w, p, h)
        for w in ("backup", "index", "cache", "log", "lock")
        for p in ("store", "server", "queue", "client")
        for h in ("checked", "moved", "rebuilt", "cleared")
    )
]


class HouseTag(Agent):
    name = "house.tag"
    description = "Asks the model for a note's house tag."
    uses_model = True

    class Input(BaseModel):
        text: str

    class Output(BaseModel):
        tag: str = Field(min_length=1, max_length=40)

    class Params(BaseModel):
        max_tokens: int = 40
        adapter: str | None = None

    async def run(self, input, ctx: NodeContext):
        return await ask(
            ctx.model(),
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": input.text}],
            self.Output,
            log=ctx.calls,
            max_tokens=ctx.params.max_tokens,
            adapter=ctx.params.adapter,
        )


class HouseCheck(Agent):
    name = "house.check"
    description = "Gate: the tag is the house's."
    gate = True

    class Input(BaseModel):
        tag: str

    class Output(BaseModel):
        passed: bool
        reasons: list[str]

    async def run(self, input, ctx: NodeContext):
        ok = input.tag == HOUSE_TAG
        return self.Output(passed=ok, reasons=[f"tag {input.tag!r}"])


HOUSE_FLOW = """\
name: house
description: tag a note, check the tag
input:
  text: str
nodes:
  - id: tag
    agent: house.tag
    inputs: {text: $input.text}
  - id: check
    agent: house.check
    inputs: {tag: $tag.tag}
output: check
"""


def house_registry():
    """Pantheon's own agents and the two toy agents."""
    reg = default_registry(plugins=False)
    reg.register(HouseTag)
    reg.register(HouseCheck)
    return reg


def house_artifacts(root: Path, reply_tag: str, n_train: int = 48, n_tasks: int = 10) -> Path:
    """Mined data for house.tag whose replies all give ``reply_tag``, and held-out jobs."""
    reg = house_registry()
    flow = parse_flow(HOUSE_FLOW, reg, source="house.yaml")
    notes_train, notes_held = NOTES[:n_train], NOTES[n_train : n_train + n_tasks]
    with JobQueue(root) as q:
        ids = enqueue(q, flow, [{"text": t} for t in notes_held])
        sha = q.get(ids[0]).flow_sha
    folder = training_root(root) / "house.tag"
    folder.mkdir(parents=True)
    lines = []
    for i, text in enumerate(notes_train + notes_held):
        msgs = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps({"tag": reply_tag})},
        ]
        split = "train" if i < n_train else "heldout"
        lines.append(json.dumps({"messages": msgs, "split": split, "run": f"notes-{i:06d}"}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    tasks = [
        {
            "run": f"house-{j:06d}",
            "job": j,
            "flow": "house",
            "flow_sha256": sha,
            "input": {"text": t},
            "status": "failed",
        }
        for j, t in zip(ids, notes_held, strict=True)
    ]
    (folder / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return root


def quick_options(**kw):
    """Training options small enough for SmolLM2 on a CPU in a test (``kw`` overrides)."""
    from pantheon.trainer.train import TrainOptions

    base = dict(
        rank=8,
        alpha=16,
        lr=3e-3,
        batch=8,
        max_steps=14,
        min_examples=20,
        checkpoint_every=5,
        max_tokens=128,
        warmup=0.0,
    )
    base.update(kw)
    return TrainOptions(**base)
