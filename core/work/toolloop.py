"""The tool loop: a bounded state machine between the model and the workspace tools.

Each step the model answers with one JSON object: either a tool call
``{"action": "tool", "tool": NAME, "args": {...}}`` — validated against that tool's schema and
carried out inside the workspace — or the final answer ``{"action": "final", "answer": {...}}``,
validated against the agent's output schema. The reply is schema-constrained where the server
supports it (the union of every tool call and the final answer). At most ``max_steps`` steps, at
temperature 0 with a fixed seed; every model call and every tool run is recorded in the node's
``calls.jsonl``. A reply that does not fit gets one corrective retry; a tool error, a refused path
or a loop that never ends stops the node with the reason. Nothing is guessed.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, RootModel, create_model

from pantheon.core.errors import NodeError
from pantheon.core.model.client import LLMClient, Message
from pantheon.core.model.safecall import CallLog, ask
from pantheon.core.work.tools import Tool, ToolError, Workspace

__all__ = ["LoopResult", "run_tool_loop", "step_model"]


@dataclass
class LoopResult:
    answer: BaseModel
    steps: int
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def step_model(tools: dict[str, Tool], output: type[BaseModel]) -> type[RootModel[Any]]:
    """The model of one step: any tool call, or the final answer."""
    variants: list[type[BaseModel]] = []
    for tool in tools.values():
        variants.append(
            create_model(
                f"Call_{tool.name}",
                __config__=ConfigDict(extra="forbid"),
                action=(Literal["tool"], ...),
                tool=(Literal[tool.name], ...),  # type: ignore[valid-type]
                args=(tool.Args, ...),
            )
        )
    variants.append(
        create_model(
            "Final",
            __config__=ConfigDict(extra="forbid"),
            action=(Literal["final"], ...),
            answer=(output, ...),
        )
    )
    union = Union[tuple(variants)]  # noqa: UP007 - built at run time
    return RootModel[union]  # type: ignore[valid-type]


def _describe(tools: dict[str, Tool], output: type[BaseModel]) -> str:
    lines = [
        "You work step by step. Each reply is exactly one JSON object, either a tool call:",
        '  {"action": "tool", "tool": NAME, "args": {...}}',
        "or, when you are done, the final answer:",
        '  {"action": "final", "answer": {...}}',
        "Tools:",
    ]
    for tool in tools.values():
        schema = json.dumps(tool.Args.model_json_schema().get("properties", {}))
        lines.append(f"- {tool.name}: {tool.description} args: {schema}")
    answer = json.dumps(output.model_json_schema().get("properties", {}))
    lines.append(f"The final answer has: {answer}")
    return "\n".join(lines)


async def run_tool_loop(
    llm: LLMClient,
    *,
    system: str,
    task: str,
    tools: dict[str, Tool],
    output: type[BaseModel],
    workspace: Workspace,
    log: CallLog | None = None,
    node: str = "node",
    max_steps: int = 6,
    max_tokens: int = 1024,
    adapter: str | None = None,
    test_timeout_s: float = 60.0,
    require_change: bool = False,
) -> LoopResult:
    """Run the loop to a final answer; NodeError with the reason when it cannot get there."""
    Step = step_model(tools, output)
    messages: list[Message] = [
        {"role": "system", "content": f"{system}\n\n{_describe(tools, output)}"},
        {"role": "user", "content": task},
    ]
    calls: list[dict[str, Any]] = []
    for step in range(1, max_steps + 1):
        try:
            reply = await ask(llm, messages, Step, log=log, max_tokens=max_tokens, adapter=adapter)
        except NodeError:
            raise
        value = reply.root
        if value.action == "final":
            changed = any(c["tool"] in ("write_file", "edit_file") for c in calls)
            if not require_change or changed:
                return LoopResult(value.answer, step, calls)
            messages.append({"role": "assistant", "content": reply.model_dump_json()})
            messages.append(
                {
                    "role": "user",
                    "content": "You have not changed any file yet. Make the change with "
                    "edit_file or write_file first, then give the final answer.",
                }
            )
            continue
        tool = tools[value.tool]
        t0 = time.perf_counter()
        try:
            kw = {"timeout_s": test_timeout_s} if tool.name == "run_tests" else {}
            result = await asyncio.to_thread(tool, workspace, value.args, **kw)
        except ToolError as exc:
            if log is not None:
                log.record(
                    kind="tool",
                    step=step,
                    tool=tool.name,
                    args=value.args.model_dump(),
                    result=None,
                    error=exc.message,
                    latency_s=round(time.perf_counter() - t0, 4),
                )
            raise NodeError(node, f"step {step}: tool {tool.name} refused: {exc.message}") from None
        record = {
            "step": step,
            "tool": tool.name,
            "args": value.args.model_dump(),
            "result": result,
        }
        calls.append(record)
        if log is not None:
            log.record(
                kind="tool", **record, error=None, latency_s=round(time.perf_counter() - t0, 4)
            )
        messages.append({"role": "assistant", "content": reply.model_dump_json()})
        messages.append(
            {"role": "user", "content": f"Result of {tool.name}: {json.dumps(result)[:8000]}"}
        )
    if not calls:
        raise NodeError(node, f"no change after {max_steps} steps: the model never used a tool")
    raise NodeError(
        node,
        f"no final answer after {max_steps} steps (the model kept calling tools: "
        + ", ".join(c["tool"] for c in calls[-5:])
        + ")",
    )
