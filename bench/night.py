"""The same short demo night twice in one run: before (no prompt cache, no speculation), then
as it runs.

Both nights are ``pantheon night --demo --headless`` with the same jobs and models, each in an
artifacts directory of its own. The first sends every request with llama-server's
``cache_prompt: false``, so each prompt is evaluated whole, its servers decode one token a
step (``--speculative none``) and split the cores between them, computing at once
(``--cpu-share split``) — what a night costs when nothing its calls share is reused; the
second is the night as it runs (the shared part of a job's prompts first, the server's slots
keeping it; tokens the context already holds drafted by n-gram speculation; the writers' server
and the reviewers' taking turns on the CPU, each with every core). Printed for each:
wall time, prompt tokens the server evaluated against those it took from its cache (its own
``timings.cache_n``), tokens drafted and accepted, generated tokens/s and the pass rate per
agent; then the ratios. Goal: at least 40 % of prompt tokens from the cache and at least 25 %
less wall time, with the same pass rates. ``--cache-only`` keeps speculation and the turns
as they run in both, to see the cache's part alone.

``--reviews`` compares the reviewers instead: before, each asked for reasons and a verdict (the
shipped flows with ``scored: false``); after, as they run, scored — one verdict token whose
probability is read, and a short reason asked only of a change scored under the threshold.
Everything else runs as it runs in both. Printed: wall time, generated tokens, the tokens a
job the reviewers generate, and the pass rates.

    python bench/night.py                          # --docs 20 --code 5, the default models
    python bench/night.py --docs 4 --code 1 --model smollm2-135m
    python bench/night.py --reviews --docs 20 --code 0 --keep /tmp/reviews
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pantheon.console.cli import main as pantheon
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.model.client import LLMClient
from pantheon.core.run import demo
from pantheon.core.store.jsonl import read_jsonl
from pantheon.core.store.queue import JobQueue


def _calls(artifacts: Path) -> dict[str, Any]:
    """Prompt, cached and generated tokens over every model call of the night."""
    prompt = cached = generated = drafted = accepted = 0
    for path in artifacts.glob("runs/**/calls.jsonl"):  # the canaries' reviews too
        rows, _ = read_jsonl(path)
        for r in rows:
            if r.get("kind") == "tool":
                continue
            prompt += int(r.get("prompt_tokens") or 0)
            cached += int(r.get("cached_tokens") or 0)
            generated += int(r.get("completion_tokens") or 0)
            drafted += int(r.get("drafted_tokens") or 0)
            accepted += int(r.get("accepted_drafts") or 0)
    return {
        "prompt": prompt,
        "cached": cached,
        "generated": generated,
        "drafted": drafted,
        "accepted": accepted,
    }


def _review_tokens(artifacts: Path) -> dict[str, Any]:
    """Generated tokens of the reviewers' calls, and the docs and code jobs they reviewed."""
    tokens = jobs = 0
    for run in artifacts.glob("runs/*"):
        if not (run / "review_a").is_dir():
            continue
        jobs += 1
        for node in ("review_a", "review_b"):
            rows, _ = read_jsonl(run / node / "calls.jsonl")
            tokens += sum(int(r.get("completion_tokens") or 0) for r in rows)
    return {"review_tokens": tokens, "reviewed_jobs": jobs}


def _reasoned_flows(into: Path) -> Path:
    """The shipped flows with every reviewer reasoned (``scored: false``)."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ("docops.yaml", "codefix.yaml"):
        text = (packaged_flows_dir() / name).read_text(encoding="utf-8")
        reasoned = text.replace("      scored: true\n", "      scored: false\n")
        assert reasoned != text, f"{name}: no scored reviewer to turn off"
        (into / name).write_text(reasoned, encoding="utf-8")
    if not (into / "corpus").exists():  # the demo's pages and tasks, as shipped
        (into / "corpus").symlink_to(packaged_flows_dir() / "corpus")
    return into


def _pass_rates(artifacts: Path) -> dict[str, str]:
    with JobQueue(artifacts, create=False) as queue:
        by_agent = queue.counts().by_agent
    return {
        agent: f"{row['done']}/{row['done'] + row['failed']}"
        for agent, row in sorted(by_agent.items())
        if row["done"] + row["failed"]
    }


def one_night(args: argparse.Namespace, after: bool, root: Path) -> dict[str, Any]:
    artifacts = root / ("after" if after else "before")
    shape = LLMClient.shape

    def no_cache(self: LLMClient, *a: Any, **kw: Any) -> dict[str, Any]:
        body = shape(self, *a, **kw)
        body["cache_prompt"] = False
        return body

    argv = ["night", "--demo", "--headless", "--docs", str(args.docs), "--code", str(args.code)]
    argv += ["--artifacts", str(artifacts), "--concurrency", str(args.concurrency)]
    if args.model:
        argv += ["--model", args.model]
    flows = demo.packaged_flows_dir
    if not after and args.reviews:
        reasoned = _reasoned_flows(root / "reasoned-flows")
        demo.packaged_flows_dir = lambda: reasoned  # type: ignore[assignment]
    elif not after and not args.cache_only:
        argv += ["--speculative", "none", "--cpu-share", "split"]
    if not after and not args.reviews:
        LLMClient.shape = no_cache  # type: ignore[method-assign]
    try:
        t0 = time.monotonic()
        code = pantheon(argv)
        wall = time.monotonic() - t0
    finally:
        LLMClient.shape = shape  # type: ignore[method-assign]
        demo.packaged_flows_dir = flows  # type: ignore[assignment]
    calls = _calls(artifacts)
    out = {
        "night": "after" if after else "before",
        "exit": code,
        "wall_s": round(wall, 1),
        **calls,
        **_review_tokens(artifacts),
        "cache_share": round(calls["cached"] / calls["prompt"], 3) if calls["prompt"] else None,
        "evaluated": calls["prompt"] - calls["cached"],
        "generated_per_s": round(calls["generated"] / wall, 2) if wall else None,
        "pass": _pass_rates(artifacts),
    }
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--docs", type=int, default=20)
    p.add_argument("--code", type=int, default=5)
    p.add_argument("--model", default=None, help="one model for every agent (default: the demo's)")
    p.add_argument("--concurrency", default="4", help="a fixed c, the same for both (default: 4)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON as well")
    p.add_argument(
        "--cache-only",
        action="store_true",
        help="speculation on in both nights: only the prompt cache differs",
    )
    p.add_argument(
        "--reviews",
        action="store_true",
        help="compare reasoned reviewers (before) with scored ones (after), all else as it runs",
    )
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="run both nights under DIR (before/, after/) and keep them, to read their output",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pantheon-bench-night-") as tmp:
        root = args.keep or Path(tmp)
        before = one_night(args, False, root)
        after = one_night(args, True, root)
    print()
    print(f"{'':24}{'before':>14}{'after':>14}")
    for label, key in (
        ("wall time, s", "wall_s"),
        ("prompt tokens", "prompt"),
        ("  from the cache", "cached"),
        ("  evaluated", "evaluated"),
        ("tokens drafted", "drafted"),
        ("  accepted", "accepted"),
        ("generated tokens/s", "generated_per_s"),
        ("generated tokens", "generated"),
        ("  by the reviewers", "review_tokens"),
        ("jobs reviewed", "reviewed_jobs"),
    ):
        print(f"{label:24}{before[key]!s:>14}{after[key]!s:>14}")
    share = after["cache_share"]
    print(f"{'cache share':24}{'-':>14}{(f'{share:.0%}' if share is not None else '-'):>14}")
    for agent in sorted(set(before["pass"]) | set(after["pass"])):
        was, now = before["pass"].get(agent, "-"), after["pass"].get(agent, "-")
        print(f"{'pass ' + agent:24}{was:>14}{now:>14}")
    less = 1 - after["wall_s"] / before["wall_s"] if before["wall_s"] else 0.0
    shown = f"{share:.0%}" if share is not None else "-"
    if args.reviews:
        per = [
            n["review_tokens"] / n["reviewed_jobs"] if n["reviewed_jobs"] else 0.0
            for n in (before, after)
        ]
        print(
            f"\nscored reviewers: {less:.0%} less wall time; the reviewers generated "
            f"{per[0]:.0f} tokens a reviewed job before, {per[1]:.0f} after"
        )
        if args.json:
            print(json.dumps({"before": before, "after": after}, indent=2))
        return
    print(
        f"\nafter: {less:.0%} less wall time (goal: 25 %), {shown} of the prompt "
        "tokens from the cache (goal: 40 %)"
    )
    if args.json:
        print(json.dumps({"before": before, "after": after}, indent=2))


if __name__ == "__main__":
    main()
