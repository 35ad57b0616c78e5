"""Where the night stands and what it made: ``status`` and ``report``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pantheon.console.commands.common import artifacts_arg
from pantheon.core import JobQueue
from pantheon.core.observe.status import status_text


def add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="the morning report: summary.json and a self-contained report.html",
        description="Build ARTIFACTS/summary.json (schema pantheon.summary/1: the changes, the "
        "failures, the night's figures) and ARTIFACTS/report.html, one file that opens offline "
        "in any browser. Incremental: a second report reads only the runs that changed.",
    )
    p.add_argument("--json", action="store_true", help="print summary.json instead of a digest")
    artifacts_arg(p)


def add_status(sub: Any) -> None:
    p = sub.add_parser("status", help="where the night stands, in plain text")
    p.add_argument("--json", action="store_true", help="counts as JSON")
    artifacts_arg(p)


def cmd_report(args: argparse.Namespace) -> int:
    from pantheon.core.morning.report import REPORT_FILE, SUMMARY_FILE, write_report
    from pantheon.core.observe.canaries import canary_text

    summary, seconds = write_report(args.artifacts)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    jobs, fig = summary["jobs"], summary["figures"]
    kappa = "–" if fig["kappa"] is None else f"{fig['kappa']:.2f}"
    print(
        f"jobs      {jobs['total']}: {jobs['done']} done, {jobs['failed']} failed, "
        f"{jobs['queued']} queued, {jobs['running']} running"
    )
    print(f"changes   {fig['merged']} merged, {fig['waiting']} waiting, {fig['rejected']} rejected")
    share = fig.get("review_pass_share")
    print(
        f"reviews   κ {kappa} over {fig['kappa_pairs']} pairs"
        + (f" ({fig['kappa_note']})" if fig.get("kappa_note") else "")
        + (f", {share:.0%} of verdicts pass" if share is not None else "")
    )
    print(f"canaries  {canary_text(summary.get('canaries'))}")
    tps, cache = fig.get("tokens_per_s") or {}, fig.get("prompt_cache")
    if tps.get("mean") is not None or cache:
        print(
            "model     "
            + (
                f"{tps['mean']:.1f} generated tokens/s (mean)"
                if tps.get("mean") is not None
                else ""
            )
            + (
                f"{', ' if tps.get('mean') is not None else ''}{cache['share']:.0%} of "
                f"{cache['prompt']} prompt tokens from the server's cache"
                if cache
                else ""
            )
        )
    for line in _learning_lines(summary.get("learning") or {}):
        print(line)
    if summary["corrupt"]:
        bad = summary["corrupt"]
        print(f"corrupt   {len(bad)} file(s) of the runs could not be read:")
        for item in bad[:10]:
            print(f"  {item['run']}: {item['problem'].splitlines()[0]}")
        if len(bad) > 10:
            print(f"  ... and {len(bad) - 10} more (listed in the report)")
    print(
        f"wrote     {args.artifacts / SUMMARY_FILE} and {args.artifacts / REPORT_FILE} "
        f"in {seconds:.2f} s"
    )
    return 0


def _learning_lines(learning: dict[str, Any]) -> list[str]:
    """The report's learning section, one line per agent with an adapter or a training."""
    lines = []
    for a in learning.get("agents") or []:
        ev = a.get("evidence") or {}
        used = a.get("adapter") or "the base model"
        text = f"{a['agent']}: {used}"
        if ev.get("tasks") and ev.get("adapter_auroc") is not None:
            text += (
                f"; held out (scores): AUROC base {ev['base_auroc']:.2f}, adapter "
                f"{ev['adapter_auroc']:.2f} on {ev['tasks']}, p = {ev.get('p_value', 1):.3g}"
            )
        elif ev.get("tasks"):
            text += (
                f"; held out ({ev.get('judged_by')}): base {ev['base_passed']}/{ev['tasks']}, "
                f"adapter {ev['adapter_passed']}/{ev['tasks']}, p = {ev.get('p_value', 1):.3g}"
            )
        night = a.get("night") or {}
        if night:
            text += "; nights: " + ", ".join(
                f"{'base' if k == 'base' else 'adapter'} {r['done']}/{r['done'] + r['failed']}"
                for k, r in night.items()
            )
        lines.append(("learning  " if not lines else "          ") + text)
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    if args.json:
        with JobQueue(args.artifacts, create=False) as queue:
            counts = queue.counts()
        print(
            json.dumps(
                {"by_flow": counts.by_flow, "by_agent": counts.by_agent, "total": counts.total},
                indent=2,
            )
        )
    else:
        print(status_text(args.artifacts))
    return 0
