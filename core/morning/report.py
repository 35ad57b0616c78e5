"""The morning report: ``summary.json`` (a documented, versioned schema) and ``report.html``.

:func:`build_summary` reads the artifacts directory — the queue (jobs, nodes, review pairs), each
run's ``run.json`` and the outputs of its test, review and merge nodes, ``decisions.jsonl`` and
``metrics/engine.jsonl`` — and returns the night as one JSON object:

``schema``
    ``"pantheon.summary/1"``; a reader refuses a major version it does not know.
``night``
    ``started`` / ``finished`` (ISO 8601, UTC), ``wall_s``.
``jobs``
    ``total`` and per status; ``by_flow``: flow -> status -> count.
``agents``
    agent -> ``done``, ``failed`` (nodes), ``pass_rate``, ``mean_s``.
``figures``
    ``kappa`` and ``kappa_pairs`` (all review pairs of the night; ``kappa`` is null and
    ``kappa_note`` says why when both reviewers gave every change the same verdict, p_e = 1),
    ``review_pass_share`` (the share of verdicts that passed), ``merged``, ``waiting``,
    ``rejected``, ``tokens_per_s`` / ``batch`` / ``rho`` (``mean`` and ``max`` over the samples),
    ``prompt_cache`` (``cached`` of ``prompt`` tokens the server took from its prefix cache, by
    its own count, and their ``share``; null where the server gives no count).
``canaries``
    the reviewers' audit: ``n``, ``caught``, ``missed``, ``share`` and ``ci95`` (Wilson 95 %) of
    the gate (a canary is caught when any reviewer failed it), ``reviewers`` (the same per
    reviewer node, with ``errors``: no usable verdict), ``by_kind`` (by planted defect),
    ``by_change`` (``code`` or ``docs``), and ``planted``: one entry
    per canary (run, kind, what, gates, verdicts).
``calibration``
    the reviewers' latest calibration of each kind and reviewer (``pantheon reviewers
    calibrate``): ``kind``, ``reviewer`` (``gate``: both), ``model``, ``auroc`` with ``low`` and
    ``high`` (its 95 % interval), ``informative`` (the interval lies above 0.5), ``threshold``,
    ``defects_caught``, ``good_passed``; empty when never calibrated.
``learning``
    the learn loop: ``agents``, one per agent with an adapter, a training or a night's nodes
    that used one: ``adapter`` (in use, or null: the base model), ``promoted_at``, ``evidence``
    (the held-out judging: ``judged_by``, ``tasks``, ``base_passed``, ``adapter_passed``, ``b``,
    ``c``, ``p_value``, ``promoted``, ``reason``), ``night`` (the agent's nodes by the adapter
    their calls used — ``base`` or the adapter's name — each ``done``, ``failed``,
    ``pass_rate``: the pass rate before and after) and ``last`` (the latest training: id,
    status, steps, held-out loss before and after); and ``learn``, the learn loop's last run
    (``training/learn.json``) or null.
``series``
    the samples over time, at most 400 points: ``t`` (epoch s), ``depth``, ``running``, ``done``,
    ``rho``, ``kappa``, ``tokens_per_s``, ``batch``.
``changes``
    one per change: run, job, flow, branch, target, repo, state (merged / waiting / rejected /
    reverted), reason, tests, reviews, files, added, removed, commit, decided_by, decided_at,
    failed_node, reverted_by.
``failures``
    one per failed run: run, job, flow, node, agent, error, artifact.
``corrupt``
    runs whose files could not be read: run, problem.

It is incremental: what each run contributes is cached in ``.report-cache.json`` under the run's
``run.json`` size and modification time, so a second report of a 10 000-run night reads only
what changed. The operator's decisions are applied on every report.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pantheon.core.errors import ArtifactError
from pantheon.core.morning.learning import learning_section, node_adapters
from pantheon.core.morning.review import apply_decision, change_of, read_decisions
from pantheon.core.observe.canaries import canary_scores, read_canaries
from pantheon.core.observe.metrics import read_samples
from pantheon.core.observe.quality import calibration_figures
from pantheon.core.observe.queuemath import cohen_kappa
from pantheon.core.store.atomic import atomic_write_json, atomic_write_text, read_json
from pantheon.core.store.layout import FAILED_FILE, OUTPUT_FILE, RUN_FILE
from pantheon.core.store.queue import STATUSES, JobQueue
from pantheon.core.store.runs import RUNS, FailedRecord, RunRecord

__all__ = [
    "CACHE_FILE",
    "REPORT_FILE",
    "SCHEMA",
    "SUMMARY_FILE",
    "build_summary",
    "write_report",
]

SCHEMA = "pantheon.summary/1"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
CACHE_FILE = ".report-cache.json"
CACHE_VERSION = 4
MAX_POINTS = 400


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def _load_cache(artifacts: Path) -> dict[str, Any]:
    try:
        data = read_json(artifacts / CACHE_FILE)
    except (FileNotFoundError, ArtifactError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    runs = data.get("runs")
    return runs if isinstance(runs, dict) else {}


def _run_entry(
    artifacts: Path, name: str, node_agents: dict[str, str], failed_node: str | None
) -> dict[str, Any]:
    """What one run contributes to the report, before the operator's decisions."""
    folder = artifacts / RUNS / name
    try:
        record = RunRecord.model_validate(read_json(folder / RUN_FILE))
    except FileNotFoundError:
        return {"corrupt": f"{folder / 'run.json'} is missing"}
    except ArtifactError as exc:
        return {"corrupt": exc.message}
    except ValidationError as exc:
        return {"corrupt": f"{folder / 'run.json'} does not fit run.json: {exc.errors()[0]['msg']}"}
    entry: dict[str, Any] = {"status": record.status}
    used = node_adapters(folder, record, node_agents)
    if used:
        entry["adapters"] = used
    unreadable = _unreadable_outputs(folder, record)
    if unreadable:
        entry["unreadable"] = unreadable
    failure = None
    if record.status == "failed":
        try:
            failed = FailedRecord.model_validate(read_json(folder / FAILED_FILE))
            failure = {
                "node": failed.node,
                "agent": failed.agent,
                "error": failed.error,
                "artifact": failed.artifact,
            }
        except (FileNotFoundError, ArtifactError, ValidationError):
            failure = {
                "node": failed_node,
                "agent": node_agents.get(failed_node or ""),
                "error": record.error or "(FAILED.json is missing or unreadable)",
                "artifact": f"runs/{name}/run.json",
            }
        entry["failure"] = failure
    change = change_of(
        artifacts,
        record,
        node_agents,
        failed_node=failure["node"] if failure else None,
        error=failure["error"] if failure else None,
    )
    if change is not None:
        entry["change"] = change.to_json()
        entry["record"] = record.model_dump(mode="json", include={"flow", "run_id", "job_id"})
    return entry


def _unreadable_outputs(folder: Path, record: RunRecord) -> list[str]:
    """Why each output of a node the run says is done cannot be read (missing, garbled)."""
    problems = []
    for node, status in record.nodes.items():
        if status not in ("done", "skipped"):
            continue
        path = folder / node / OUTPUT_FILE
        try:
            read_json(path)
        except FileNotFoundError:
            problems.append(f"{path} is missing, though node {node!r} is done")
        except ArtifactError as exc:
            problems.append(exc.message)
    return problems


def _series(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    step = max(1, len(samples) // MAX_POINTS)
    picked = samples[::step]
    if samples and picked[-1] is not samples[-1]:
        picked.append(samples[-1])

    def get(s: dict[str, Any], *path: str) -> Any:
        v: Any = s
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        return v if isinstance(v, int | float) else None

    return {
        "t": [s.get("ts") for s in picked],
        "depth": [get(s, "depth") for s in picked],
        "running": [get(s, "running") for s in picked],
        "done": [get(s, "done") for s in picked],
        "rho": [get(s, "rho") for s in picked],
        "kappa": [get(s, "kappa") for s in picked],
        "tokens_per_s": [get(s, "tokens", "generated") for s in picked],
        "batch": [get(s, "batch", "value") for s in picked],
    }


def _prompt_cache(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The prompt tokens the server took from its cache over the night, by its own count."""
    cached = prompt = 0
    for s in samples:
        cache = s.get("cache") or {}
        if isinstance(cache.get("cached"), int) and isinstance(cache.get("prompt"), int):
            cached += cache["cached"]
            prompt += cache["prompt"]
    if prompt <= 0:
        return None
    return {"cached": cached, "prompt": prompt, "share": round(cached / prompt, 4)}


def _spread(values: list[Any]) -> dict[str, float | None]:
    xs = [float(v) for v in values if isinstance(v, int | float)]
    if not xs:
        return {"mean": None, "max": None}
    return {"mean": round(statistics.fmean(xs), 3), "max": round(max(xs), 3)}


def build_summary(
    artifacts: Path, *, write_cache: bool = True, memo: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The night as one JSON object (see the module's docstring for the schema).

    ``write_cache=False`` reads the cache but leaves it as it is (for a reader, the console,
    that writes nothing but the operator's controls and decisions). ``memo``: a reader's own
    cache in memory, used instead of the file and brought up to date."""
    artifacts = Path(artifacts)
    with JobQueue(artifacts, create=False) as queue:
        jobs = queue.summaries()
        node_rows = queue.node_rows()
        pairs = queue.review_pairs(10**9)
    nodes_of: dict[int, dict[str, str]] = defaultdict(dict)
    agents: dict[str, dict[str, Any]] = defaultdict(lambda: {"done": 0, "failed": 0, "s": []})
    for job_id, node, agent, status, seconds in node_rows:
        nodes_of[job_id][node] = agent
        agents[agent][status] += 1
        agents[agent]["s"].append(seconds)

    cache = memo if memo is not None and memo else _load_cache(artifacts)
    fresh: dict[str, Any] = {}
    decisions, bad_decisions = read_decisions(artifacts)
    changes, failures, corrupt = [], [], []
    used: list[list[Any]] = []
    by_flow: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
    for job in jobs:
        by_flow[job.flow][job.status] += 1
        if job.status in ("queued",):
            continue
        name = job.run_name
        stat = _stat_key(artifacts / RUNS / name / RUN_FILE)
        # the queue's side goes into the key too: its nodes are written after run.json; and
        # each node's output, so one garbled after the run ended is seen
        outputs = [
            _stat_key(artifacts / RUNS / name / node / OUTPUT_FILE)
            for node in sorted(nodes_of.get(job.id, {}))
        ]
        key = None if stat is None else [*stat, job.status, job.node, outputs]
        cached = cache.get(name)
        if key is not None and cached is not None and cached.get("key") == key:
            entry = cached["entry"]
        else:
            failed_node = job.node if job.status == "failed" else None
            entry = _run_entry(artifacts, name, nodes_of.get(job.id, {}), failed_node)
        if key is not None and job.status in ("done", "failed"):
            fresh[name] = {"key": key, "entry": entry}
        if "corrupt" in entry and job.status != "running":
            corrupt.append({"run": name, "problem": entry["corrupt"]})
            continue
        used += entry.get("adapters", ())
        corrupt += [{"run": name, "problem": why} for why in entry.get("unreadable", ())]
        failure = entry.get("failure")
        if failure is None and job.status == "failed":
            # failed in the queue while run.json says otherwise (the model server never
            # answered, the job was abandoned after its engine died)
            failure = {
                "node": job.node,
                "agent": job.node_agent,
                "error": job.error or "failed",
                "artifact": f"runs/{name}/run.json",
            }
        if failure:
            failures.append({"run": name, "job": job.id, "flow": job.flow, **failure})
        if entry.get("change"):
            change = entry["change"]
            if (d := decisions.get(name)) is not None:
                change = apply_decision(change, d)
            changes.append(change)
    if memo is not None:
        memo.clear()
        memo.update(fresh)
    if write_cache:
        # a read-only artifacts directory still gets its report, only slower next time
        with contextlib.suppress(OSError, ArtifactError):
            atomic_write_json(artifacts / CACHE_FILE, {"version": CACHE_VERSION, "runs": fresh})

    samples = read_samples(artifacts)
    canaries = read_canaries(artifacts)
    started = min((j.started for j in jobs if j.started), default=None)
    finished = max((j.finished for j in jobs if j.finished), default=None)
    kappa = cohen_kappa(pairs)
    total = dict.fromkeys(STATUSES, 0)
    for row in by_flow.values():
        for k, v in row.items():
            total[k] += v
    states = defaultdict(int)
    for c in changes:
        states[c["state"]] += 1
    return {
        "schema": SCHEMA,
        "generated_at": datetime.now(UTC).isoformat(),
        "artifacts": str(artifacts.resolve()),
        "night": {
            "started": _iso(started),
            "finished": _iso(finished),
            "wall_s": round(finished - started, 1) if started and finished else None,
        },
        "jobs": {"total": len(jobs), **total, "by_flow": dict(by_flow)},
        "agents": {
            name: {
                "done": row["done"],
                "failed": row["failed"],
                "pass_rate": round(row["done"] / (row["done"] + row["failed"]), 4)
                if row["done"] + row["failed"]
                else None,
                "mean_s": round(statistics.fmean(row["s"]), 3) if row["s"] else None,
            }
            for name, row in sorted(agents.items())
        },
        "figures": {
            "kappa": None if kappa.value is None else round(kappa.value, 4),
            "kappa_pairs": kappa.pairs,
            "kappa_note": kappa.note,
            "review_pass_share": None if kappa.pass_share is None else round(kappa.pass_share, 4),
            "merged": states["merged"],
            "waiting": states["waiting"],
            "rejected": states["rejected"],
            "reverted": states["reverted"],
            "tokens_per_s": _spread([(s.get("tokens") or {}).get("generated") for s in samples]),
            "prompt_cache": _prompt_cache(samples),
            "batch": _spread([(s.get("batch") or {}).get("value") for s in samples]),
            "rho": _spread([s.get("rho") for s in samples]),
            "unreadable_decisions": bad_decisions,
        },
        "canaries": {
            **canary_scores(canaries),
            "planted": [
                {k: c.get(k) for k in ("run", "job", "flow", "kind", "what", "gates", "verdicts")}
                for c in canaries
            ],
        },
        "calibration": calibration_figures(artifacts),
        "series": _series(samples),
        "learning": learning_section(artifacts, used),
        "changes": changes,
        "failures": failures,
        "corrupt": corrupt,
    }


def write_report(artifacts: Path) -> tuple[dict[str, Any], float]:
    """Build the summary, write ``summary.json`` and ``report.html``; return it and the seconds."""
    from pantheon.core.morning.report_html import render_html

    t0 = time.perf_counter()
    summary = build_summary(artifacts)
    atomic_write_text(
        Path(artifacts) / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    )
    atomic_write_text(Path(artifacts) / REPORT_FILE, render_html(summary))
    return summary, time.perf_counter() - t0
