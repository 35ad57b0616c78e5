"""pass@1 of base models on the held-out side of the shipped code corpus: the tasks a codegen
adapter is judged on (``pantheon promote --corpus``), one greedy fix each, made and tested as
the judging makes and tests it. Sets an adapter's figure beside a bigger model's: is a trained
0.5B a better writer than the 1.5B it would replace?

    python bench/codegen_heldout.py [--models qwen2.5-coder-0.5b qwen2.5-coder-1.5b]
                                    [--limit N] [--fraction 0.2] [--json rows.json]

Each model gets an embedded llama-server of its own; four tasks at a time, as the judging.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from pantheon.core.model.client import LLMClient
from pantheon.core.model.server import ModelServer, ServerConfig
from pantheon.trainer.judges import corpus_heldout, one_fix


async def one_model(model: str, tasks, parallel: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        server = ModelServer(Path(tmp), ServerConfig(model=model, port=0, parallel=parallel))
        state = await asyncio.to_thread(server.start)
        try:
            async with LLMClient(state.endpoint, timeout_s=900) as llm:
                gate = asyncio.Semaphore(parallel)

                async def fix(task):
                    async with gate:
                        return await one_fix(llm, task, None)

                t0 = time.perf_counter()
                results = await asyncio.gather(*(fix(t) for t in tasks), return_exceptions=True)
                wall = time.perf_counter() - t0
        finally:
            await asyncio.to_thread(server.stop)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:  # the server, not an answer: said, and counted as not fixed
        print(f"{model}: {len(failed)} task(s) could not be asked: {failed[0]}", file=sys.stderr)
    passed = [
        t.run
        for t, r in zip(tasks, results, strict=True)
        if not isinstance(r, BaseException) and r[0]
    ]
    return {"model": model, "fixed": len(passed), "of": len(tasks), "wall_s": wall, "runs": passed}


async def main_async(args: argparse.Namespace) -> int:
    tasks = corpus_heldout(args.fraction)[: args.limit or None]
    if not tasks:
        print("no held-out corpus task at that fraction", file=sys.stderr)
        return 1
    print(f"{len(tasks)} held-out corpus tasks (fraction {args.fraction:g})", flush=True)
    rows = []
    for model in args.models:
        row = await one_model(model, tasks, args.parallel)
        rows.append(row)
        print(
            f"{model:22} {row['fixed']:3}/{row['of']:<3} ({row['fixed'] / row['of']:4.0%})  "
            f"{row['wall_s'] / 60:5.1f} min",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
    ap.add_argument("--limit", type=int, help="the first N held-out tasks only")
    ap.add_argument("--fraction", type=float, default=0.2, help="the share held out (default 0.2)")
    ap.add_argument("--parallel", type=int, default=4, help="tasks at a time (the server's slots)")
    ap.add_argument("--json", help="also write the rows to this file")
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
