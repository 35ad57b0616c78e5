"""The code-fix harness measured: pass rate of each prompt form at k = 1 and k = 8, per model.

For each model it starts the embedded llama-server, and for each task set (the demo's 30
hand-written tasks, and a fixed sample of the HumanEval mutants) and each form it runs the real
harness (``pantheon.core.work.codefix.run_fix``) on every task in its own scratch folder, the real
tests judging, four tasks at a time as the night runs them. It prints, per row: tasks fixed,
wall time, generated tokens, and tokens per fixed task. ``tools`` is the bounded JSON tool loop
(k = 1 only), for comparison. A form may carry ``+debug`` (the k candidates over two rounds,
the second shown the best failing candidate's own test output) and ``+name`` (one sentence
naming the bug before the code): ``--forms whole_file whole_file+debug whole_file+name``.

    python bench/codefix.py --models qwen2.5-coder-0.5b qwen2.5-coder-1.5b --sample 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from pantheon.core.agents.code import Codegen
from pantheon.core.errors import NodeError
from pantheon.core.model.client import LLMClient
from pantheon.core.model.safecall import CallLog
from pantheon.core.model.server import ModelServer, ServerConfig
from pantheon.core.run.demo import code_tasks, corpus_tasks
from pantheon.core.work.codefix import FixForm, run_fix
from pantheon.core.work.testcmd import resolve_test_command
from pantheon.core.work.toolloop import run_tool_loop
from pantheon.core.work.tools import TOOLS, Workspace


def materialize(tasks: list[dict[str, str]], root: Path) -> list[tuple[dict[str, str], Path]]:
    out = []
    for t in tasks:
        folder = root / t["id"]
        folder.mkdir(parents=True)
        (folder / f"{t['module']}.py").write_text(t["source"])
        (folder / f"test_{t['module']}.py").write_text(t["test"])
        out.append((t, folder))
    return out


def tokens(log: CallLog) -> int:
    return sum(int(c.get("completion_tokens") or 0) for c in log.read())


async def one_task(llm, task, folder: Path, form: str, k: int, logs: Path) -> tuple[bool, int]:
    path, test = f"{task['module']}.py", f"test_{task['module']}.py"
    log = CallLog(logs / f"{task['id']}-{form}-{k}")
    log.path.parent.mkdir(parents=True, exist_ok=True)
    original = (folder / path).read_text()
    try:
        if form == "tools":
            ws = Workspace(folder)
            shown = "\n".join(f"--- {p}\n{(folder / p).read_text()}" for p in (path, test))
            await run_tool_loop(
                llm,
                system=Codegen.SYSTEM,
                task=f"{task['task']}\n\n{shown}",
                tools=TOOLS,
                output=Codegen.Answer,
                workspace=ws,
                log=log,
                max_steps=6,
                max_tokens=1024,
                require_change=True,
            )
            ok = resolve_test_command(folder).run(folder, test).passed
        else:
            base, *flags = form.split("+")
            await run_fix(
                llm,
                root=folder,
                path=path,
                test_path=test,
                task=task["task"],
                command=resolve_test_command(folder),
                form=FixForm(base),
                k=k,
                log=log,
                rounds=2 if "debug" in flags else 1,
                name_bug="name" in flags,
            )
            ok = True
    except NodeError:
        ok = False
    finally:
        (folder / path).write_text(original)
    return ok, tokens(log)


async def run_row(llm, tasks, form: str, k: int, logs: Path, concurrency: int = 4):
    gate = asyncio.Semaphore(concurrency)

    async def guarded(t, f):
        async with gate:
            return await one_task(llm, t, f, form, k, logs)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(guarded(t, f) for t, f in tasks))
    wall = time.perf_counter() - t0
    fixed = sum(ok for ok, _ in results)
    generated = sum(n for _, n in results)
    return fixed, wall, generated


async def main_async(args) -> None:
    rng = random.Random(args.seed)
    corpus = corpus_tasks()
    sample = sorted(rng.sample(corpus, min(args.sample, len(corpus))), key=lambda t: t["id"])
    sets = {"demo (30)": code_tasks()[: args.demo], f"humaneval mutants ({len(sample)})": sample}
    rows = []
    for model in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            server = ModelServer(
                tmp_path / "artifacts",
                ServerConfig(model=model, port=0, parallel=args.parallel, ctx_per_slot=4096),
            )
            state = await asyncio.to_thread(server.start)
            try:
                async with LLMClient(state.endpoint, timeout_s=900) as llm:
                    for name, tasks in sets.items():
                        if not tasks:
                            continue
                        for form in args.forms:
                            for k in args.ks:
                                if form == "tools" and k > 1:
                                    continue
                                where = tmp_path / f"{name[:4]}-{form}-{k}"
                                made = materialize(tasks, where / "tasks")
                                fixed, wall, gen = await run_row(
                                    llm, made, form, k, where / "logs", args.concurrency
                                )
                                row = {
                                    "model": model,
                                    "tasks": name,
                                    "form": form,
                                    "k": k,
                                    "fixed": fixed,
                                    "of": len(tasks),
                                    "wall_s": round(wall, 1),
                                    "generated": gen,
                                    "tokens_per_fix": round(gen / fixed) if fixed else None,
                                }
                                rows.append(row)
                                print(
                                    f"{model:20} {name:24} {form:22} k={k:<2} "
                                    f"{fixed:3}/{len(tasks):<3} ({fixed / len(tasks):4.0%}) "
                                    f"{wall:7.1f} s  {gen:7} tokens  "
                                    f"{row['tokens_per_fix'] or '-'} tokens/fix",
                                    flush=True,
                                )
            finally:
                await asyncio.to_thread(server.stop)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
    ap.add_argument("--forms", nargs="+", default=["whole_file", "search_replace", "tools"])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--demo", type=int, default=30, help="demo tasks (0 for none)")
    ap.add_argument("--sample", type=int, default=30, help="HumanEval mutants, a fixed sample")
    ap.add_argument(
        "--seed", type=int, default=7, help="of the sample (tune on one, report on another)"
    )
    ap.add_argument("--parallel", type=int, default=8, help="the server's slots")
    ap.add_argument("--concurrency", type=int, default=4, help="tasks at a time")
    ap.add_argument("--json", help="also write the rows to this file")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
