"""No-op jobs per second through the queue: the artifacts' own SQLite file with one engine, and
one PostgreSQL queue (PgQueuer) with 1, 2 and 4 engine processes, in one run, one line a setup.

    python bench/engines.py               # 400 jobs a setup
    python bench/engines.py --jobs 1000

Each engine is a real ``pantheon engine --until-empty`` process with its own artifacts
directory (as on its own host), c = 8 each. A job is the textstats flow: three agents that call
no model, so what is measured is the queue and the engine (claims, leases, records), not a
model. Each setup runs twice: with no job (the processes' start and stop) and with the jobs;
jobs/s is the jobs over the difference, and the overhead a job is its inverse times the engines.
On a 2-core machine more engines cannot add CPU; what this shows is that they do not collapse
on the queue's locks. The PostgreSQL server is a throwaway one started here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pantheon.core.store.pgserver import new_database, throwaway_postgres

TEXT = " ".join(["a queue measured with jobs that call no model at all"] * 5)


def pantheon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pantheon.console", *args], capture_output=True, text=True
    )


def drain(root: Path, queue: str | None, engines: int, jobs: int) -> float:
    """Enqueue ``jobs`` and drain them with ``engines`` processes; the wall time."""
    dirs = [root / f"host-{i}" for i in range(engines)]
    with_queue = ["--queue", queue] if queue else []
    inputs = root / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"text": TEXT}) + "\n" for _ in range(jobs)))
    if jobs:
        out = pantheon(
            "enqueue", "textstats", "--inputs", str(inputs), *with_queue,
            "--artifacts", str(dirs[0]),
        )  # fmt: skip
        if out.returncode:
            raise SystemExit(out.stderr)
    for d in dirs:
        pantheon("control", "--concurrency", "8", "--artifacts", str(d))
    start = time.perf_counter()
    command = [sys.executable, "-m", "pantheon.console", "engine", "--until-empty", *with_queue]
    command += ["--tick", "0.01", "--sample-every", "60", "-q"]
    procs = [
        subprocess.Popen(
            [*command, "--artifacts", str(d)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in dirs
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"an engine failed: {err[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=400)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, throwaway_postgres() as running:
        server = running.url
        setups = [("sqlite", 1), ("postgres", 1), ("postgres", 2), ("postgres", 4)]
        for n, (kind, engines) in enumerate(setups):
            walls = []
            for jobs in (0, args.jobs):
                root = Path(tmp) / f"{n}-{jobs}"
                root.mkdir()
                queue = new_database(server) if kind == "postgres" else None
                walls.append(drain(root, queue, engines, jobs))
            work = max(walls[1] - walls[0], 1e-9)
            rate = args.jobs / work
            rows.append((kind, engines, rate, 1000 * work * engines / args.jobs))
            print(
                f"{kind}, {engines} engine{'s' if engines > 1 else ''}: {rate:.1f} jobs/s "
                f"({rows[-1][3]:.1f} ms of engine time a job; start and stop {walls[0]:.1f} s)",
                flush=True,
            )
    base = rows[0][2]
    for kind, engines, rate, _ in rows[1:]:
        print(f"  {kind} with {engines}: {rate / base:.2f}x the SQLite queue's jobs/s")


if __name__ == "__main__":
    main()
