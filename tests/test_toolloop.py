"""The tool loop with a scripted model, and the workspace sandbox."""

from __future__ import annotations

import json
import os

import pytest
from helpers import scripted_model
from pydantic import BaseModel

from pantheon.core import NodeError, ReplyError
from pantheon.core.model.safecall import CallLog
from pantheon.core.work.toolloop import run_tool_loop, step_model
from pantheon.core.work.tools import TOOLS, ToolError, Workspace


class Answer(BaseModel):
    summary: str


def scripted(replies):
    """A model server that answers each chat request with the next scripted reply."""
    requests = []

    def answer(body):
        requests.append(body)
        reply = replies.pop(0)
        return reply if isinstance(reply, str) else json.dumps(reply)

    llm, http = scripted_model(answer)
    return llm, requests, http


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "test_calc.py").write_text(
        "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    )
    return Workspace(root)


async def loop(llm, ws, tmp_path, **kw):
    return await run_tool_loop(
        llm,
        system="You fix code.",
        task="Make the tests pass.",
        tools=TOOLS,
        output=Answer,
        workspace=ws,
        log=CallLog(tmp_path / "node"),
        node="codegen",
        **kw,
    )


async def test_tool_calls_then_a_final_answer(ws, tmp_path):
    llm, requests, http = scripted(
        [
            {"action": "tool", "tool": "read_file", "args": {"path": "calc.py"}},
            {
                "action": "tool",
                "tool": "edit_file",
                "args": {"path": "calc.py", "old": "a - b", "new": "a + b"},
            },
            {"action": "tool", "tool": "run_tests", "args": {"target": ""}},
            {"action": "final", "answer": {"summary": "add now adds"}},
        ]
    )
    result = await loop(llm, ws, tmp_path)
    await http.aclose()
    assert result.answer == Answer(summary="add now adds") and result.steps == 4
    assert "a + b" in (ws.root / "calc.py").read_text()
    assert result.tool_calls[2]["result"]["passed"] is True
    # every request is constrained to the union of tool calls and the final answer
    schema = requests[0]["response_format"]["json_schema"]["schema"]
    assert "anyOf" in json.dumps(schema) and requests[0]["temperature"] == 0.0
    # the model saw each tool result
    assert "Result of read_file" in requests[1]["messages"][-1]["content"]
    records = CallLog(tmp_path / "node").read()
    kinds = [r.get("kind", "model") for r in records]
    assert kinds == ["model", "tool", "model", "tool", "model", "tool", "model"]


async def test_an_unknown_tool_gets_one_correction_then_fails(ws, tmp_path):
    bad = {"action": "tool", "tool": "rm_rf", "args": {"path": "/"}}
    llm, requests, http = scripted([bad, bad])
    with pytest.raises(ReplyError, match="does not fit"):
        await loop(llm, ws, tmp_path)
    await http.aclose()
    assert len(requests) == 2
    assert "could not be used" in requests[1]["messages"][-1]["content"]


async def test_wrong_arguments_get_one_correction(ws, tmp_path):
    llm, _, http = scripted(
        [
            {"action": "tool", "tool": "read_file", "args": {"file": "calc.py"}},
            {"action": "tool", "tool": "read_file", "args": {"path": "calc.py"}},
            {"action": "final", "answer": {"summary": "read it"}},
        ]
    )
    result = await loop(llm, ws, tmp_path)
    await http.aclose()
    assert result.answer.summary == "read it"


async def test_an_endless_loop_stops_at_max_steps(ws, tmp_path):
    call = {"action": "tool", "tool": "list_files", "args": {}}
    llm, _, http = scripted([call] * 10)
    with pytest.raises(NodeError, match="no final answer after 3 steps"):
        await loop(llm, ws, tmp_path, max_steps=3)
    await http.aclose()


@pytest.mark.parametrize(
    "path", ["../outside.txt", "/etc/passwd", "link/secret.txt", ".git/config"]
)
async def test_escapes_are_refused_and_stop_the_node(ws, tmp_path, path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, ws.root / "link")
    llm, _, http = scripted([{"action": "tool", "tool": "read_file", "args": {"path": path}}])
    with pytest.raises(NodeError, match="tool read_file refused"):
        await loop(llm, ws, tmp_path)
    await http.aclose()
    [_, tool] = CallLog(tmp_path / "node").read()
    assert tool["kind"] == "tool" and tool["error"]


async def test_a_hanging_test_is_stopped(ws, tmp_path):
    (ws.root / "test_hang.py").write_text("import time\n\ndef test_hang():\n    time.sleep(60)\n")
    llm, _, http = scripted(
        [{"action": "tool", "tool": "run_tests", "args": {"target": "test_hang.py"}}]
    )
    with pytest.raises(NodeError, match="did not finish within 1 s"):
        await loop(llm, ws, tmp_path, test_timeout_s=1.0)
    await http.aclose()


async def test_garbage_and_fenced_replies(ws, tmp_path):
    llm, _, http = scripted(
        [
            '```json\n{"action": "final", "answer": {"summary": "fenced"}}\n```',
        ]
    )
    assert (await loop(llm, ws, tmp_path)).answer.summary == "fenced"
    await http.aclose()
    llm, _, http = scripted(["I will now fix it!", '{"action": "final", "answer": {"summ'])
    with pytest.raises(ReplyError, match="cut short"):
        await loop(llm, ws, tmp_path)
    await http.aclose()


def test_the_tools_themselves(ws):
    assert TOOLS["list_files"](ws, TOOLS["list_files"].Args(pattern="*.py"))["files"] == [
        "calc.py",
        "test_calc.py",
    ]
    TOOLS["write_file"](ws, TOOLS["write_file"].Args(path="pkg/new.py", content="x = 1\n"))
    assert (ws.root / "pkg" / "new.py").read_text() == "x = 1\n"
    with pytest.raises(ToolError, match="occurs 0 times"):
        TOOLS["edit_file"](ws, TOOLS["edit_file"].Args(path="calc.py", old="nope", new="x"))
    failing = TOOLS["run_tests"](ws, TOOLS["run_tests"].Args())
    assert failing["passed"] is False and "assert" in failing["output"]


def test_the_step_schema_names_every_tool():
    schema = json.dumps(step_model(TOOLS, Answer).model_json_schema())
    for name in TOOLS:
        assert f'"{name}"' in schema


async def test_a_change_is_required_before_the_final_answer(ws, tmp_path):
    llm, requests, http = scripted(
        [
            {"action": "final", "answer": {"summary": "done already"}},
            {
                "action": "tool",
                "tool": "edit_file",
                "args": {"path": "calc.py", "old": "a - b", "new": "a + b"},
            },
            {"action": "final", "answer": {"summary": "fixed"}},
        ]
    )
    result = await loop(llm, ws, tmp_path, require_change=True)
    await http.aclose()
    assert result.answer.summary == "fixed" and result.steps == 3
    assert "You have not changed any file yet" in requests[1]["messages"][-1]["content"]
