"""The server's curve, and the c ``--concurrency auto`` settles on beside the best fixed c.

The engine drains ``docmeta`` jobs (the model describes each demo page) against the embedded
llama-server, once for each fixed c for ``--seconds`` of busy time each, measuring generated
tokens/s and jobs/s; then once with the tuner from c = 2, until it settles. It prints the curve,
the best fixed c, the c auto chose and the ratio of their throughputs (goal: within 10 %).

    python bench/concurrency.py                               # smollm2-135m, c = 1 2 4 8
    python bench/concurrency.py --model qwen2.5-coder-0.5b --seconds 60 --levels 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

from pantheon.core import Engine, JobQueue, default_registry, enqueue, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.model.client import LLMClient
from pantheon.core.model.files import ModelStore
from pantheon.core.model.server import ModelServer, ServerConfig
from pantheon.core.observe.tuning import ConcurrencyTuner
from pantheon.core.run.demo import demo_inputs
from pantheon.core.store.control import ControlFile


def _enqueue(artifacts: Path, jobs: int) -> None:
    registry = default_registry()
    flow = load_flow(packaged_flows_dir() / "docmeta.yaml", registry)
    docs = [d for d in demo_inputs() if len(d["text"].split()) >= 40]
    with JobQueue(artifacts) as q:
        enqueue(q, flow, (docs * (jobs // len(docs) + 1))[:jobs])


async def run_fixed(endpoint: str, alias: str, c: int, seconds: float, jobs: int):
    """tokens/s and jobs/s at c, over ``seconds`` after a warm-up of c jobs."""
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(tmp)
        _enqueue(artifacts, jobs)
        ControlFile(artifacts).update(by="bench", concurrency=c)
        async with LLMClient(endpoint, model=alias) as llm:
            engine = Engine(artifacts, default_registry(), until_empty=True, llm=llm)
            task = asyncio.create_task(engine.run())
            while engine.stats.done + engine.stats.failed < c and not task.done():
                await asyncio.sleep(0.2)
            t0, tok0 = time.monotonic(), llm.tokens_seen_total
            n0 = engine.stats.done + engine.stats.failed
            while time.monotonic() - t0 < seconds and not task.done():
                await asyncio.sleep(0.2)
            dt = time.monotonic() - t0
            tokens, done = (
                llm.tokens_seen_total - tok0,
                engine.stats.done + engine.stats.failed - n0,
            )
            engine.request_stop(hard=True)
            await asyncio.gather(task, return_exceptions=True)
    return tokens / dt, done / dt


async def run_auto(
    endpoint: str, alias: str, slots: int, period_s: float, jobs: int, limit_s: float
):
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(tmp)
        _enqueue(artifacts, jobs)
        ControlFile(artifacts).update(by="bench", concurrency=2)
        tuner = ConcurrencyTuner(start=2, ceiling=slots, period_s=period_s)
        async with LLMClient(endpoint, model=alias) as llm:
            engine = Engine(artifacts, default_registry(), until_empty=True, llm=llm, tuner=tuner)
            task = asyncio.create_task(engine.run())
            t0 = time.monotonic()
            while (
                tuner.phase == "measuring" and not task.done() and time.monotonic() - t0 < limit_s
            ):
                await asyncio.sleep(0.5)
            engine.request_stop(hard=True)
            await asyncio.gather(task, return_exceptions=True)
    return tuner, time.monotonic() - t0


async def main_async(args) -> None:
    logging.basicConfig(level=logging.ERROR)  # the model's unusable replies are not news here
    ModelStore().pull(args.model)
    slots = max(args.levels)
    with tempfile.TemporaryDirectory() as tmp:
        server = ModelServer(
            Path(tmp), ServerConfig(model=args.model, port=0, parallel=slots, ctx_per_slot=2048)
        )
        state = await asyncio.to_thread(server.start)
        try:
            print(f"model {args.model}, {slots} slots; {args.seconds:.0f} s busy at each fixed c")
            curve = {}
            for c in args.levels:
                tps, jps = await run_fixed(state.endpoint, state.alias, c, args.seconds, args.jobs)
                curve[c] = tps
                print(f"fixed c={c:<3} {tps:7.1f} generated tok/s  {jps:6.3f} jobs/s", flush=True)
            tuner, took = await run_auto(
                state.endpoint, state.alias, slots, args.seconds, args.jobs, args.limit
            )
        finally:
            await asyncio.to_thread(server.stop)
    best = max(curve, key=curve.get)
    measured = ", ".join(f"c={lv['c']} {lv['tokens_per_s']:.1f}" for lv in tuner.figures()["curve"])
    print(f"auto     {tuner.note} after {took:.0f} s (its measurements: {measured})")
    chosen = tuner.c or 0
    if chosen in curve:
        ratio = curve[chosen] / curve[best]
        print(
            f"best fixed c={best} ({curve[best]:.1f} tok/s); auto's c={chosen} gives "
            f"{curve[chosen]:.1f} tok/s at fixed c: {ratio:.2f}x the best "
            f"({'within' if ratio >= 0.9 else 'NOT within'} 10 %)"
        )
    else:
        print(f"best fixed c={best} ({curve[best]:.1f} tok/s); auto's c={chosen} was not swept")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=30.0, help="busy seconds at each c")
    ap.add_argument("--jobs", type=int, default=400, help="jobs queued for each run")
    ap.add_argument("--limit", type=float, default=600.0, help="the most seconds auto may take")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
