"""llama-server's n-gram speculation against none, on the code writer's own kind of work.

Each code task of the packaged HumanEval corpus is sent in the shape of codegen's prompt (the
task and the file under test, the whole fixed file asked back; without the failing tests'
output, which this bench does not run). A fix copies most of its file, so much of
the reply is text the prompt already holds, which n-gram speculation drafts and the server
verifies in one batch. Both servers run the same model with the same slots, one after the
other, greedy, and at each concurrency the bench prints generated tokens/s with and without
speculation, the drafts' acceptance and how many replies came out the same.

    python bench/speculation.py                        # qwen2.5-coder-1.5b, c = 1 and 4
    python bench/speculation.py --model qwen2.5-coder-0.5b --tasks 8 --levels 1 2 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pantheon.core.model.client import ChatReply, LLMClient
from pantheon.core.model.files import ModelStore
from pantheon.core.model.server import ModelServer, ServerConfig
from pantheon.core.run.demo import corpus_tasks

SYSTEM = (
    "You fix one Python file so that its failing tests pass. Reply with the whole corrected "
    "file in one ```python block, and nothing else."
)


def tasks(n: int) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": f"{r['task']}\n\nThe file {r['module']}.py:\n```python\n"
                f"{r['source']}```",
            },
        ]
        for r in corpus_tasks()[:n]
    ]


async def drive(endpoint: str, alias: str, asks: list, c: int, max_tokens: int):
    gate = asyncio.Semaphore(c)

    async def one(messages) -> ChatReply:
        async with gate:
            return await client.chat(messages, max_tokens=max_tokens, temperature=0.0)

    async with LLMClient(endpoint, model=alias) as client:
        t0 = time.monotonic()
        replies = await asyncio.gather(*(one(m) for m in asks))
        return replies, time.monotonic() - t0


def measure(args: argparse.Namespace, speculative: str, asks: list) -> dict[int, Any]:
    out: dict[int, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pantheon-bench-spec-") as tmp:
        cfg = ServerConfig(
            model=args.model, port=0, parallel=max(args.levels), speculative=speculative
        )
        server = ModelServer(Path(tmp), cfg)
        state = server.start(timeout_s=300)
        try:
            for c in args.levels:
                replies, wall = asyncio.run(drive(state.endpoint, state.alias, asks, c, 600))
                generated = sum(r.completion_tokens for r in replies)
                drafted = [r.drafted for r in replies if r.drafted]
                out[c] = {
                    "wall_s": round(wall, 1),
                    "tok_s": round(generated / wall, 2),
                    "drafted": sum(d[0] for d in drafted),
                    "accepted": sum(d[1] for d in drafted),
                    "texts": [r.text for r in replies],
                }
                print(json.dumps({"speculative": speculative, "c": c, **out[c], "texts": None}))
        finally:
            server.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--tasks", type=int, default=8, help="code tasks of the corpus (default: 8)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4], help="concurrency levels")
    args = p.parse_args()
    ModelStore().pull(args.model)
    asks = tasks(args.tasks)
    none = measure(args, "none", asks)
    ngram = measure(args, "ngram", asks)
    print(f"\n{'c':>3}{'none tok/s':>12}{'ngram tok/s':>13}{'ratio':>8}{'accepted':>10}{'same':>7}")
    for c in args.levels:
        a, b = none[c], ngram[c]
        share = f"{b['accepted'] / b['drafted']:.0%}" if b["drafted"] else "-"
        same = sum(x == y for x, y in zip(a["texts"], b["texts"], strict=True))
        print(
            f"{c:>3}{a['tok_s']:>12}{b['tok_s']:>13}{b['tok_s'] / a['tok_s']:>7.2f}×"
            f"{share:>10}{same:>4}/{len(asks)}"
        )


if __name__ == "__main__":
    main()
