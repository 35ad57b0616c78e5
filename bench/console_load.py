"""The console's cost on a big night: startup, CPU share and frame times while a night runs.

    python bench/console_load.py                    # 10 000 runs, 50 events/s for 20 s
    python bench/console_load.py --runs 2000 --seconds 10 --rate 100 --dir /dev/shm

Builds a night in a temp dir: a real Engine runs the shipped textstats flow over 90 % of the runs
(one text in ten is too short: that run fails), the rest stay queued, metrics/engine.jsonl holds
an hour of samples. The console (PantheonConsole, headless, 120x40) starts on it in this process;
a writer PROCESS (its CPU is not counted) plays an engine at --rate writes a second: it claims
jobs, writes run.json, advances and finishes them through JobQueue, appends a metric sample every
2 s and rewrites control.json every 5 s. Two windows of --seconds are measured, the idle night
(no writer: the baseline) and then under load: this process's CPU share (process_time over wall
time, watcher thread included), the event loop's stalls (a task that sleeps 5 ms and records how
late it wakes) and Textual's render frames (Screen._on_timer_update, _refresh_layout and
_compositor_refresh, with the terminal write the headless driver skips put back: the update is
rendered to its escape sequences).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import math
import multiprocessing as mp
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from textual._compositor import CompositorUpdate
from textual.app import App
from textual.screen import Screen

from pantheon.console.app import PantheonConsole
from pantheon.core import ControlFile, Engine, JobQueue, default_registry, enqueue, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.observe.metrics import metrics_path, write_sample
from pantheon.core.store.queue import NodeRow
from pantheon.core.store.runs import RunDir, RunRecord, now_iso
from pantheon.widgets.runs_table import RunsTable

NODES = (("normalize", "text.normalize"), ("stats", "text.stats"), ("check", "check.min_words"))


def texts(n: int) -> Iterator[dict[str, str]]:
    for i in range(n):
        words = 12 if i % 10 == 9 else 60 + i % 50
        yield {"title": f"doc {i}", "text": " ".join(f"word{j % 17}" for j in range(words))}


def sample(ts: float, i: int) -> dict[str, object]:
    phase = (i % 30) / 30
    return {
        "ts": ts, "depth": 1000 - i % 1000, "running": 4, "rho": round(0.5 + 0.4 * phase, 3),
        "p_wait": 0.3, "recommended_c": 4, "drain_s": 600.0, "kappa": 0.8, "kappa_pairs": 40,
        "c": 4, "batch": {"value": 2.0 + phase, "source": "llama.cpp /metrics"},
        "tokens": {"generated": 20.0 + i % 7, "prompt": 200.0, "source": "engine"},
    }  # fmt: skip


def build(artifacts: Path, runs: int, queued: int) -> None:
    """A real night: the engine runs runs - queued jobs, queued more wait; an hour of samples."""
    registry = default_registry(plugins=False)
    flow = load_flow(packaged_flows_dir() / "textstats.yaml", registry)
    metrics_path(artifacts).parent.mkdir(parents=True)
    now = time.time()
    lines = [json.dumps(sample(now - 3600 + 2 * i, i)) for i in range(1800)]
    metrics_path(artifacts).write_text("\n".join(lines) + "\n")
    with JobQueue(artifacts) as queue:
        enqueue(queue, flow, texts(runs - queued))
    ControlFile(artifacts).update(by="bench", concurrency=16)
    asyncio.run(Engine(artifacts, registry, until_empty=True, tick_s=0.02).run())
    with JobQueue(artifacts) as queue:
        enqueue(queue, flow, texts(queued))


def job_events(queue: JobQueue, artifacts: Path, owner: str) -> Iterator[str]:
    """Jobs' lives, one write per step: claim, run.json, two nodes, run.json, finish."""
    while jobs := queue.claim(1, owner, lease_s=3600):
        job, run = jobs[0], RunDir(artifacts, jobs[0].run_name)
        yield "claim"
        run.prepare()
        record = RunRecord(
            run_id=job.run_id, job_id=job.id, flow=job.flow, flow_sha256=job.flow_sha,
            status="running", input=job.input, started_at=now_iso(),
            nodes=dict.fromkeys((n for n, _ in NODES), "pending"),
        )  # fmt: skip
        run.write_record(record)
        yield "run.json"
        rows = [NodeRow(node, agent, "done", 0.01) for node, agent in NODES]
        for i in (0, 1):
            queue.advance(job.id, rows[i : i + 1], next_agent=NODES[i + 1][1])
            yield "advance"
        failed = job.id % 10 == 0
        status = "failed" if failed else "done"
        nodes = {"normalize": "done", "stats": "done", "check": status}
        run.write_record(record.model_copy(update=dict(status=status, nodes=nodes)))
        yield "run.json"
        if failed:
            queue.fail(job.id, owner, "too short: 12 words < 40", [NodeRow(*NODES[2], status, 0)])
        else:
            queue.complete(job.id, owner, rows[2:])
        yield "finish"


def writer(artifacts: str, seconds: float, rate: float, ready, go, out) -> None:
    """The night's engine, played at ``rate`` writes a second (runs in its own process)."""
    art, owner, counts = Path(artifacts), "bench-writer:0:w", {}
    control = ControlFile(art)
    with JobQueue(art) as queue:
        lives = [job_events(queue, art, owner) for _ in range(4)]
        ready.set()
        go.wait()
        t0 = last_metric = last_control = time.monotonic()
        n = 0
        while (now := time.monotonic()) < t0 + seconds:
            if now - last_metric >= 2.0:
                write_sample(art, sample(time.time(), n))
                kind, last_metric = "metric", now
            elif now - last_control >= 5.0:
                control.update(by="bench", concurrency=4 + n % 3)
                kind, last_control = "control.json", now
            else:
                kind = next(lives[n % 4], "idle")
            counts[kind] = counts.get(kind, 0) + 1
            n += 1
            time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
        out.put((time.monotonic() - t0, counts))


GC_PAUSES: list[tuple[float, int]] = []
"""Each garbage collection's pause and generation."""
_gc_start = [0.0]


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    else:
        GC_PAUSES.append((time.perf_counter() - _gc_start[0], info["generation"]))


gc.callbacks.append(_on_gc)

SLOW: list[tuple[float, str]] = []
"""Every frame with what drew it, for the slowest-frames line."""


def time_frames(frames: list[float]) -> None:
    """Time each outermost render (layout + compositor + terminal sequence) into ``frames``."""
    depth = 0

    def timed(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            nonlocal depth
            depth += 1
            t = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                depth -= 1
                if depth == 0:
                    frames.append(time.perf_counter() - t)
                    SLOW.append((frames[-1], fn.__name__))

        return wrapper

    for name in ("_on_timer_update", "_refresh_layout", "_compositor_refresh"):
        setattr(Screen, name, timed(getattr(Screen, name)))
    display = App._display

    def _display(self: App, screen: Screen, renderable: object) -> None:
        display(self, screen, renderable)
        if self.is_headless and isinstance(renderable, CompositorUpdate):
            renderable.render_segments(self.console)  # what a real terminal would be sent

    App._display = _display  # type: ignore[method-assign]


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, math.ceil(q * len(values)) - 1)] if values else 0


async def window(frames: list[float], until, app: PantheonConsole | None = None) -> dict:
    """CPU share, loop stalls and frames while ``until`` runs."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - t - 0.005)

    task = asyncio.create_task(probe())
    n0, c0, w0 = len(frames), time.process_time(), time.perf_counter()
    r0, rc0 = (app.reads, app.read_cpu_s) if app else (0, 0.0)
    result = await until
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    reads, read_cpu = (app.reads - r0, app.read_cpu_s - rc0) if app else (0, 0.0)
    stop.set()
    await task
    f = frames[n0:]
    return dict(cpu=100 * cpu / wall, wall=wall, lag_max=max(lags) * 1e3,
                lag_p99=pct(lags, 0.99) * 1e3, frame_max=max(f, default=0) * 1e3,
                frame_p99=pct(f, 0.99) * 1e3, fps=len(f) / wall, result=result,
                reads=reads / wall, read_cpu=100 * read_cpu / wall)  # fmt: skip


async def measure(artifacts: Path, args: argparse.Namespace, writer_proc: tuple) -> dict:
    frames: list[float] = []
    probe_only = await window(frames, asyncio.sleep(2.0))
    time_frames(frames)
    proc, ready, go, out = writer_proc
    app = PantheonConsole(artifacts)
    t0 = time.perf_counter()
    async with app.run_test(size=(120, 40)) as pilot:
        while app.snapshot is None:
            await asyncio.sleep(0.002)
        t_snap = time.perf_counter() - t0
        await pilot.pause()
        t_full = time.perf_counter() - t0
        rows = len(app.screen.query_one(RunsTable).rows)
        if not await asyncio.to_thread(ready.wait, 60):
            raise SystemExit("the writer process did not start")
        await asyncio.sleep(2.0)  # let the first screen's leftovers settle
        idle = await window(frames, asyncio.sleep(args.seconds), app)
        go.set()
        loaded = await window(frames, asyncio.to_thread(out.get, True, args.seconds + 60), app)
        jobs = app.snapshot.jobs
    proc.join()
    done = sum(j.status == "done" for j in jobs.values())
    return dict(snap=t_snap, full=t_full, rows=rows, jobs=len(jobs), done=done,
                probe=probe_only["cpu"], idle=idle, loaded=loaded)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000, help="jobs in the night (default 10 000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="each window (default 20 s)")
    ap.add_argument("--rate", type=float, default=50.0, help="writer events/s (default 50)")
    ap.add_argument("--dir", type=Path, help="where to put the artifacts (default: a temp dir)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # not the failed runs, one by one
    queued = min(args.runs // 2, max(args.runs // 10, math.ceil(args.rate * args.seconds / 5)))
    root = Path(tempfile.mkdtemp(prefix="pantheon-bench-", dir=args.dir))
    artifacts = root / "night"
    try:
        t0 = time.perf_counter()
        build(artifacts, args.runs, queued)
        t_build = time.perf_counter() - t0
        ctx = mp.get_context("spawn")
        ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(
            target=writer, args=(str(artifacts), args.seconds, args.rate, ready, go, out)
        )
        proc.start()
        r = asyncio.run(measure(artifacts, args, (proc, ready, go, out)))
        report(args, queued, t_build, r)
        print(f"removing {root} ...", flush=True)  # 70 000 files: slow on some disks
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(args: argparse.Namespace, queued: int, t_build: float, r: dict) -> None:
    idle, load = r["idle"], r["loaded"]
    w_s, counts = load["result"]
    events = sum(v for k, v in counts.items() if k != "idle")
    print(f"night                {args.runs:,} runs ({queued:,} queued), 1,800+ metric samples;")
    print(f"                     built in {t_build:.1f} s (a real engine over textstats)")
    print(f"first snapshot       {r['snap']:.2f} s  (the watcher thread's first full read)")
    print(f"first full screen    {r['full']:.2f} s  ({r['rows']} rows of {r['jobs']:,} runs shown)")
    print(f"writer               {events} events in {w_s:.1f} s = {events / w_s:.1f} events/s")
    print("                     " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"{'':21}{'idle night':>12}{'under load':>14}   target")
    ratio = load["cpu"] / idle["cpu"] if idle["cpu"] else float("inf")
    print(f"console CPU          {idle['cpu']:>10.1f} %{load['cpu']:>12.1f} %   < 5 % of one core")
    print(f"  load / idle        {ratio:>25.1f}x")
    for key, label in (("lag", "loop stall"), ("frame", "render frame")):
        for stat in ("max", "p99"):
            a, b = idle[f"{key}_{stat}"], load[f"{key}_{stat}"]
            print(f"{label + ' ' + stat:<21}{a:>9.1f} ms{b:>11.1f} ms   < 50 ms")
    print(f"frames rendered      {idle['fps']:>9.1f}/s{load['fps']:>11.1f}/s   "
          f"(windows {idle['wall']:.1f} s, {load['wall']:.1f} s)")  # fmt: skip
    print(f"night reads          {idle['reads']:>9.1f}/s{load['reads']:>11.1f}/s   "
          "(each a NightChanged: the watcher's batches, the in-flight poll)")  # fmt: skip
    print(f"  their CPU          {idle['read_cpu']:>9.1f} %{load['read_cpu']:>11.1f} %   "
          "(part of the console CPU above)")  # fmt: skip
    print(f"the probe's own cost {r['probe']:>10.1f} %   (5 ms sleeps, in both CPU figures)")
    pauses = sorted(GC_PAUSES, reverse=True)[:3]
    print("longest GC pauses    " + ", ".join(f"{t * 1e3:.0f} ms (gen {g})" for t, g in pauses))
    worst = sorted(SLOW, reverse=True)[:5]
    print("slowest frames       " + ", ".join(f"{t * 1e3:.0f} ms ({name})" for t, name in worst))
    print(f"runs done at the end {r['done']:,} of {r['jobs']:,}", flush=True)


if __name__ == "__main__":
    main()
