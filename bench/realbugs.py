"""The night on real libraries with one planted bug each: is the bug placed, fixed, merged, and
is nothing else broken?

For each library of :data:`pantheon.core.work.realbugs.LIBRARIES` (its PyPI sdist, pinned,
with its own test suite): bugs are planted (a mutation in a function its passing tests run,
kept when one of those tests fails; deterministic from the seed, cached), then, for each bug,
the library with that one bug is a git repository, and

- **placement**: discovery runs the suite traced; each test file the bug fails is a job,
  placed right when its top suspect is the mutated function (top-1), or among the three the
  prompt shows (top-3);
- **the night** (``--night N``, the first N bugs of each library): ``pantheon night --repo``
  headless, then: the bug's tests pass on ``main`` (fixed and merged), every test that passed
  before the bug still passes on ``main`` (no regression merged), and how many candidate fixes
  the test gate refused for breaking another test. Wall time and generated tokens per fix.
- **the fix harness alone** (``--fix N``): one model server for all bugs, no reviewers and
  no night; each bug's first job is given to ``run_fix`` once per ``--forms`` (``+lines``:
  the suspects' hot lines quoted; ``+debug``: two rounds; ``+name``: name the bug first),
  fixed when the bug's tests pass and every test that passed before still does. The kept
  diffs are written under ``--keep DIR`` to be read.

    python bench/realbugs.py                             # placement, 40 bugs a library
    python bench/realbugs.py --count 20 --night 5 --model qwen2.5-coder-0.5b
    python bench/realbugs.py --libraries toolz --count 30 --no-placement --fix 8 \\
        --forms whole_file whole_file+lines --keep /tmp/fixes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pantheon.core.work.discover import failing_test_jobs
from pantheon.core.work.localize import rank_suspects
from pantheon.core.work.realbugs import (
    LIBRARIES,
    SEED,
    RealBug,
    bug_repo,
    fetch,
    lay_out,
    plant,
    read_bugs,
    write_bugs,
)
from pantheon.core.work.suite import run_suite
from pantheon.core.work.testcmd import resolve_test_command

CACHE = Path.home() / ".cache" / "pantheon" / "realbugs"


def _bugs(name: str, cache: Path, count: int, seed: int) -> tuple[Path, list[RealBug]]:
    lib = LIBRARIES[name]
    repo = lay_out(lib, fetch(lib, cache / "sdists"), cache / f"{name}-{lib.version}")
    saved = cache / f"{name}-{lib.version}-seed{seed}-{count}.jsonl"
    if saved.is_file():
        return repo, read_bugs(saved)
    t0 = time.perf_counter()
    bugs = plant(
        lib,
        repo,
        resolve_test_command(repo),
        count=count,
        seed=seed,
        progress=lambda s: print(f"  {s}", end="\r", file=sys.stderr),
    )
    print(
        f"  {name}: {len(bugs)} bugs planted in {time.perf_counter() - t0:.0f} s", file=sys.stderr
    )
    write_bugs(saved, bugs)
    return repo, bugs


RANKERS = ("file", "all", "night")
"""How a job's failing tests are scored against the passing ones: the failing tests of its
own test file, or every failing test of the suite; ``night``: the suspects discovery gives the
job (every failing test of the suite, ties broken by the tracebacks), what the night uses."""


def _placement(repo: Path, bugs: list[RealBug], tmp: Path) -> dict[str, float]:
    files = right_file = 0
    top1 = dict.fromkeys(RANKERS, 0)
    top3 = dict.fromkeys(RANKERS, 0)
    seconds = 0.0
    misses = []
    for n, bug in enumerate(bugs):
        clone = bug_repo(repo, bug, tmp / f"place{n}")
        command = resolve_test_command(clone)
        t0 = time.perf_counter()
        run = run_suite(command, clone, timeout_s=600, cover=True)
        found = failing_test_jobs(clone, command, run=run)
        seconds += time.perf_counter() - t0
        jobs = {j["test"]: j for j in found.jobs}
        failing = {t.test for t in run.failed}
        passing = {t.test for t in run.passed}
        for test_file in sorted({t.split("::", 1)[0] for t in bug.failing}):
            files += 1
            job = jobs.get(test_file)
            if job is None:
                misses.append(f"{bug.id}: {test_file} not placed")
                continue
            right_file += job["path"] == bug.path
            mine = {t for t in failing if t.split("::", 1)[0] == test_file}
            for ranker in RANKERS:
                others = failing - mine if ranker == "all" else set()
                ranked = (
                    [(s["path"], s["name"]) for s in job.get("suspects", [])]
                    if ranker == "night"
                    else [
                        (s.path, s.name)
                        for s in rank_suspects(
                            run.coverage, mine, passing, repo=clone, also_failing=others
                        )
                    ]
                )
                top1[ranker] += ranked[:1] == [(bug.path, bug.function)]
                top3[ranker] += (bug.path, bug.function) in ranked[:3]
                if ranker == "night" and ranked[:1] != [(bug.path, bug.function)]:
                    misses.append(f"{bug.id} in {bug.function}: {test_file} -> {ranked[:3]}")
    for line in misses[:10]:
        print(f"    miss: {line}", file=sys.stderr)
    return {
        "bugs": len(bugs),
        "test_files": files,
        "right_file": right_file,
        **{f"top1_{r}": top1[r] for r in RANKERS},
        **{f"top3_{r}": top3[r] for r in RANKERS},
        "discovery_s": round(seconds / max(1, len(bugs)), 2),
    }


def _hot_hit(bug: RealBug, job: dict) -> tuple[bool, bool]:
    """(the job's top suspect is the bug's function and quotes hot lines, one of them is the
    mutated line or next to it)."""
    top = (job.get("suspects") or [{}])[0]
    if (top.get("path"), top.get("name")) != (bug.path, bug.function) or not top.get("lines"):
        return False, False
    span = range(bug.line - 1, bug.line + max(1, bug.old_lines.count("\n")) + 1)
    return True, any(line in span for line in top["lines"])


async def _fix_bugs(
    repo: Path, bugs: list[RealBug], tmp: Path, model: str, forms: list[str], k: int
) -> dict[str, dict[str, float]]:
    """The fix harness alone (no reviewers, no night), one model server for all: per form,
    bugs whose first failing test file's job the harness fixes with the bug's tests passing
    and no test broken that passed before."""
    from pantheon.core.errors import NodeError
    from pantheon.core.model.client import LLMClient
    from pantheon.core.model.safecall import CallLog
    from pantheon.core.model.server import ModelServer, ServerConfig
    from pantheon.core.work.codefix import FixForm, run_fix

    server = ModelServer(
        tmp / "server", ServerConfig(model=model, port=0, parallel=8, ctx_per_slot=4096)
    )
    state = await asyncio.to_thread(server.start)
    rows = {f: {"fixed": 0, "tried": 0, "tokens": 0, "wall_s": 0.0} for f in forms}
    hot = near = 0
    try:
        async with LLMClient(state.endpoint, timeout_s=1800) as llm:
            for n, bug in enumerate(bugs):
                clone = bug_repo(repo, bug, tmp / f"fix{n}")
                command = resolve_test_command(clone)
                run = await asyncio.to_thread(run_suite, command, clone, timeout_s=600, cover=True)
                jobs = failing_test_jobs(clone, command, run=run).jobs
                passing_before = {t.test for t in run.passed}
                if not jobs:
                    print(f"  {n + 1} {bug.id}: no job placed", flush=True)
                    continue
                job = jobs[0]
                quoted, right = _hot_hit(bug, job)
                hot += quoted
                near += right
                target = clone / job["path"]
                original = target.read_text(encoding="utf-8")
                said = []
                for form in forms:
                    base, *flags = form.split("+")
                    log = CallLog(tmp / "logs" / f"{n}-{form}")
                    log.path.parent.mkdir(parents=True, exist_ok=True)
                    t0 = time.perf_counter()
                    ok = False
                    try:
                        await run_fix(
                            llm,
                            root=clone,
                            path=job["path"],
                            test_path=job["test"],
                            task=job["task"],
                            command=command,
                            form=FixForm(base),
                            k=k,
                            log=log,
                            suspects=job.get("suspects") or (),
                            rounds=2 if "debug" in flags else 1,
                            name_bug="name" in flags,
                            hot_lines="lines" in flags,
                        )
                        diff = subprocess.run(
                            ["git", "diff"], cwd=clone, capture_output=True, text=True
                        ).stdout
                        (tmp / "diffs").mkdir(exist_ok=True)
                        (tmp / "diffs" / f"{n}-{form}.diff").write_text(
                            f"# {bug.id} ({bug.function}): {bug.before!r} -> {bug.after!r}\n{diff}"
                        )
                        after = await asyncio.to_thread(run_suite, command, clone, timeout_s=600)
                        outcome = {t.test: t.outcome for t in after.tests.values()}
                        ok = all(outcome.get(t) == "passed" for t in passing_before) and all(
                            outcome.get(t) == "passed" for t in bug.failing
                        )
                    except NodeError:
                        pass
                    finally:
                        target.write_text(original, encoding="utf-8")
                    row = rows[form]
                    row["tried"] += 1
                    row["fixed"] += ok
                    row["wall_s"] += time.perf_counter() - t0
                    row["tokens"] += sum(int(c.get("completion_tokens") or 0) for c in log.read())
                    said.append(f"{form} {'fixed' if ok else '-'}")
                print(
                    f"  {n + 1}/{len(bugs)} {bug.id} ({bug.function}; hot lines "
                    f"{'quoted' if quoted else 'none'}{', on the bug' if right else ''}): "
                    + ", ".join(said),
                    flush=True,
                )
    finally:
        await asyncio.to_thread(server.stop)
    for row in rows.values():
        row["hot_lines_quoted"], row["hot_lines_on_bug"] = hot, near
    return rows


def _night(
    repo: Path, bugs: list[RealBug], tmp: Path, model: str | None, code_model: str | None
) -> dict[str, float]:
    from pantheon.console.cli import main as pantheon

    fixed = regressions_merged = refused = nights = 0
    wall = 0.0
    tokens = 0
    for n, bug in enumerate(bugs):
        clone = bug_repo(repo, bug, tmp / f"night{n}")
        command = resolve_test_command(clone)
        before = run_suite(command, repo, timeout_s=600)
        passing_before = {t.test for t in before.passed}
        artifacts = tmp / f"artifacts{n}"
        argv = ["night", "--repo", str(clone), "--headless", "--no-docs", "--artifacts"]
        argv += [str(artifacts), "--concurrency", "2"]
        if model:
            argv += ["--model", model]
        if code_model:
            argv += ["--code-model", code_model]
        t0 = time.perf_counter()
        pantheon(argv)
        wall += time.perf_counter() - t0
        nights += 1
        subprocess.run(["git", "checkout", "-q", "main"], cwd=clone, check=True)
        after = run_suite(command, clone, timeout_s=600)
        outcome = {t.test: t.outcome for t in after.tests.values()}
        now_fixed = all(outcome.get(t) == "passed" for t in bug.failing)
        fixed += now_fixed
        broken = [t for t in passing_before if outcome.get(t) != "passed"]
        regressions_merged += bool(set(broken) - set(bug.failing))
        print(
            f"  {n + 1}/{len(bugs)} {bug.id} ({bug.function}): "
            + ("fixed and merged" if now_fixed else "not fixed")
            + (
                f", {len(set(broken) - set(bug.failing))} other test(s) broken"
                if set(broken) - set(bug.failing)
                else ""
            )
            + f"; {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        for out in artifacts.glob("runs/codefix-*/test/output.json"):
            checks = json.loads(out.read_text()).get("checks", {})
            refused += checks.get("no other test broken") is False
        for calls in artifacts.glob("runs/**/calls.jsonl"):
            for line in calls.read_text().splitlines():
                tokens += int(json.loads(line).get("completion_tokens") or 0)
    return {
        "nights": nights,
        "fixed_merged": fixed,
        "regressions_merged": regressions_merged,
        "refused_by_regression_gate": refused,
        "wall_s_per_fix": round(wall / max(1, fixed), 1),
        "tokens_per_fix": round(tokens / max(1, fixed)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--libraries", nargs="+", default=sorted(LIBRARIES), choices=sorted(LIBRARIES))
    p.add_argument("--count", type=int, default=40, help="bugs planted a library (default 40)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--night", type=int, default=0, metavar="N", help="run the night on N bugs")
    p.add_argument("--model", default=None, help="the night's --model")
    p.add_argument("--code-model", default=None, help="the night's --code-model")
    p.add_argument(
        "--fix",
        type=int,
        default=0,
        metavar="N",
        help="the fix harness alone (no reviewers, no night) on N bugs, once per --forms",
    )
    p.add_argument(
        "--forms",
        nargs="+",
        default=["whole_file", "whole_file+lines"],
        help="--fix: the prompt forms compared (flags +lines, +debug, +name)",
    )
    p.add_argument("--k", type=int, default=8, help="--fix: candidates a bug")
    p.add_argument("--no-placement", action="store_true", help="only the nights")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep each night's repository and artifacts under DIR, to read what was merged "
        "(default: a temporary folder, removed at the end)",
    )
    args = p.parse_args()
    results = {}
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="pantheon-realbugs-"))
        else:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(args.keep)
        for name in args.libraries:
            repo, bugs = _bugs(name, args.cache, args.count, args.seed)
            work = Path(tmp) / name
            work.mkdir(exist_ok=args.keep is not None)
            results[name] = {}
            if not args.no_placement:
                place = _placement(repo, bugs, work)
                results[name]["placement"] = place
                print(
                    f"{name}: {place['bugs']} bugs, {place['test_files']} failing test files; "
                    f"placed on the right file {place['right_file']}, on the right function "
                    f"{place['top1_night']} (top-1), {place['top3_night']} (top-3, the ones the "
                    f"prompt shows); without the tracebacks: {place['top1_all']} (top-1); "
                    f"scored against the file's own failing tests only: {place['top1_file']} "
                    f"(top-1), {place['top3_file']} (top-3); "
                    f"discovery {place['discovery_s']} s a repository",
                    flush=True,
                )
            if args.fix:
                model = args.code_model or "qwen2.5-coder-1.5b"
                fix = asyncio.run(
                    _fix_bugs(repo, bugs[: args.fix], work, model, args.forms, args.k)
                )
                for form, row in fix.items():
                    print(
                        f"{name}: fix harness, {model}, {form}, k={args.k}: fixed "
                        f"{row['fixed']}/{row['tried']}; {row['wall_s'] / max(1, row['tried']):.0f}"
                        f" s and {row['tokens'] / max(1, row['tried']):.0f} generated tokens a "
                        f"bug; hot lines quoted for {row['hot_lines_quoted']}, on the bug "
                        f"{row['hot_lines_on_bug']}",
                        flush=True,
                    )
                results[name]["fix"] = fix
            if args.night:
                night = _night(repo, bugs[: args.night], work, args.model, args.code_model)
                print(
                    f"{name}: night on {night['nights']} bugs: fixed and merged "
                    f"{night['fixed_merged']}, regressions merged {night['regressions_merged']}, "
                    f"candidates refused for breaking another test "
                    f"{night['refused_by_regression_gate']}; {night['wall_s_per_fix']} s and "
                    f"{night['tokens_per_fix']} generated tokens a fix"
                )
                results[name]["night"] = night
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
