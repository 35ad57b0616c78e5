"""Live figures of the night, computed headless and written to ``artifacts/metrics/engine.jsonl``.

Every sample (default every 2 s) holds the queue (depth, running, done, failed), the queue math
(λ, μ per worker, c, ρ, Erlang-C P(wait), expected wait, the c to ask for, time to drain), the
model server's average batch size and tokens/s — scraped from its own Prometheus ``/metrics``
(llama.cpp and vLLM names), or else what the engine itself observed, and each figure says which —
and reviewer agreement κ over the last review pairs. The console, the report and any other tool
read the same file; a corrupt line is skipped with a warning, never a crash. The server's
figures are scraped in scrape.py; the engine's own are exported to Prometheus by exporter.py.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pantheon.core.model.client import LLMClient
from pantheon.core.model.pool import ServerPool
from pantheon.core.observe.canaries import canaries_path, canary_scores, canary_text, read_canaries
from pantheon.core.observe.exporter import PrometheusExporter
from pantheon.core.observe.quality import (
    blind_gates,
    calibration_figures,
    calibration_path,
    calibration_text,
)
from pantheon.core.observe.queuemath import (
    cohen_kappa,
    erlang_c,
    expected_accepted,
    expected_wait,
    recommended_concurrency,
    utilization,
)
from pantheon.core.observe.scrape import ScraperGroup, ServerScraper, json_round
from pantheon.core.store.atomic import append_line
from pantheon.core.store.jsonl import read_jsonl
from pantheon.core.store.layout import METRICS_FILE, metrics_path
from pantheon.core.store.queue import JobQueue
from pantheon.core.store.records import MetricsSample

__all__ = [
    "METRICS_FILE",
    "MetricsSampler",
    "PrometheusExporter",
    "ServerScraper",
    "metrics_path",
    "read_samples",
    "sample_text",
    "server_line",
]

log = logging.getLogger(__name__)


@dataclass
class _EngineObserved:
    """The engine's own view when the server exposes nothing."""

    at: float = field(default_factory=time.monotonic)
    prompt: int = 0
    completion: int = 0
    in_flight: list[int] = field(default_factory=list)


class _Servers:
    """The servers behind several clients (single servers or pools), each once: their
    counters read as one."""

    def __init__(self, clients: Sequence[LLMClient | ServerPool | None]) -> None:
        members: dict[int, LLMClient] = {}
        for c in clients:
            for m in c.members if isinstance(c, ServerPool) else [c] if c is not None else []:
                members.setdefault(id(m), m)
        self.members = list(members.values())
        """Each server's own client."""

    def total(self, counter: str) -> int:
        """A client counter (``prompt_tokens_total``, ``in_flight``...) summed over them."""
        return sum(int(getattr(m, counter)) for m in self.members)


class MetricsSampler:
    """Builds one sample at a time from the queue, the controls and the model server."""

    def __init__(
        self,
        queue: JobQueue,
        *,
        llm: LLMClient | ServerPool | None = None,
        others: Sequence[LLMClient | ServerPool] = (),
        window_s: float = 300.0,
        kappa_window: int = 50,
        max_rho: float = 0.8,
        max_p_wait: float = 0.2,
        artifacts: Path | None = None,
        slots: int | None = None,
    ) -> None:
        self.queue = queue
        self.slots = slots
        """Requests the model server decodes together (its slots; vLLM's max_num_seqs): more
        concurrency than that only queues at the server. None: unknown (asked of llama-server's
        ``/props`` once)."""
        self._asked_slots = slots is not None
        self.artifacts = artifacts
        """Where the canaries are read from (None: no canary figures)."""
        self._files: dict[Path, tuple[tuple[int, int], Any]] = {}
        """What was read of the canaries' and calibration files, by their (size, mtime)."""
        self.llm = llm
        self.window_s = window_s
        self.kappa_window = kappa_window
        self.max_rho = max_rho
        self.max_p_wait = max_p_wait
        self.servers = _Servers([llm, *others]) if llm is not None else None
        """Every server the engine calls (the night's and the writers' own), read as one."""
        self.scraper: ServerScraper | ScraperGroup | None = None
        members = self.servers.members if self.servers is not None else []
        if len(members) > 1:
            self.scraper = ScraperGroup(
                [(m.where, ServerScraper(m.base_url, m._http)) for m in members]
            )
        elif members:
            self.scraper = ServerScraper(members[0].base_url, members[0]._http)
        self._observed = _EngineObserved()
        self._cache_mark = (0, 0)
        if self.servers is not None:
            self._observed.prompt = self.servers.total("prompt_tokens_total")
            self._observed.completion = self.servers.total("completion_tokens_total")
            self._cache_mark = self._cache_totals()

    async def poll(self) -> None:
        """Called between samples: time-average the batch gauges."""
        if not self._asked_slots and self.llm is not None:
            self._asked_slots = True
            self.slots = self.llm.max_choices or await self.llm.server_slots()
        if self.scraper is not None:
            await self.scraper.poll()
        if self.servers is not None:
            self._observed.in_flight.append(self.servers.total("in_flight"))

    def _engine_figures(self) -> dict[str, Any]:
        servers, obs = self.servers, self._observed
        assert servers is not None
        prompt = servers.total("prompt_tokens_total")
        completion = servers.total("completion_tokens_total")
        now = time.monotonic()
        dt = now - obs.at
        flights = obs.in_flight or [servers.total("in_flight")]
        out: dict[str, Any] = {
            "batch": {
                "value": json_round(sum(flights) / len(flights)),
                "source": "engine (model calls in flight, time-averaged)",
            },
            "tokens": {
                "prompt": json_round((prompt - obs.prompt) / dt, 2),
                "generated": json_round((completion - obs.completion) / dt, 2),
                "source": "engine (usage of finished calls)",
            },
        }
        if dt < 1.0:  # a rate over a sliver of time (the last sample of a night) means nothing
            out["tokens"] = {"why": f"interval of {dt:.2f} s is too short for a rate"}
        self._observed = _EngineObserved(at=now, prompt=prompt, completion=completion)
        return out

    def sample(self, *, concurrency: int, merges_paused: bool) -> dict[str, Any]:
        now = time.time()
        counts = self.queue.counts()
        total = counts.total
        win = self.queue.window(now - self.window_s)
        # a night younger than the window is measured over its own age, not the whole window
        first = win["first_arrival"]
        span = self.window_s if first is None else min(self.window_s, max(now - first, 1.0))
        lam = win["arrivals"] / span
        service = win["service_s"]
        mu = 1.0 / service if service else 0.0
        c = concurrency
        rho = utilization(lam, mu, c)
        p_wait = erlang_c(c, lam / mu) if mu > 0 else None
        wait = expected_wait(lam, mu, c)
        drain = total["queued"] / (c * mu) if mu > 0 else None
        # jobs that all arrived at once (a night enqueued in one go) are a burst: its λ is no
        # steady rate, and the time to drain says more than ρ
        first_at, last_at = win["first_arrival"], win.get("last_arrival")
        burst = bool(
            win["arrivals"] >= 2
            and first_at is not None
            and last_at is not None
            and last_at - first_at <= max(5.0, 0.1 * (now - first_at))
        )
        advised = recommended_concurrency(lam, mu, max_rho=self.max_rho, max_p_wait=self.max_p_wait)
        bounded_by = None
        if advised is not None and self.slots and advised > self.slots:
            advised, bounded_by = self.slots, "slots"
        agents = {}
        for agent, row in win["agents"].items():
            agents[agent] = {
                "nodes": row["nodes"],
                "lambda": json_round(row["nodes"] / span),
                "mu": json_round(1.0 / row["mean_s"]) if row["mean_s"] else None,
                "pass_rate": json_round(row["passed"] / row["nodes"]) if row["nodes"] else None,
            }
        pairs = self.queue.review_pairs(self.kappa_window)
        kappa = cohen_kappa(pairs)
        # one review's pass rate p; with two reviewers a change is accepted with p² (E ≈ T c μ p²)
        p_pass = sum(a + b for a, b in pairs) / (2 * len(pairs)) if pairs else None
        accepted = expected_accepted(1.0, [(c * mu, p_pass)]) if p_pass is not None and mu else None
        sample: dict[str, Any] = {
            "t": datetime.fromtimestamp(now, UTC).isoformat(),
            "ts": round(now, 3),
            "depth": total["queued"],
            "running": total["running"],
            "done": total["done"],
            "failed": total["failed"],
            "window_s": round(span, 1),
            "lambda": json_round(lam),
            "mu": json_round(mu),
            "c": c,
            "rho": json_round(rho),
            "p_wait": json_round(p_wait),
            "wait_s": json_round(wait, 2),
            "stable": None if rho is None else rho < 1.0,
            "recommended_c": advised,
            "recommended_by": bounded_by,
            "slots": self.slots,
            "burst": burst,
            "drain_s": json_round(drain, 1),
            "kappa": json_round(kappa.value),
            "kappa_pairs": kappa.pairs,
            "kappa_note": kappa.note,
            "review_pass_rate": json_round(p_pass),
            "canaries": self._canary_figures(),
            "calibration": self._calibration_figures(),
            "accepted_per_hour": json_round(accepted, 1),
            "merges_paused": merges_paused,
            "agents": agents,
        }
        if self.scraper is None:
            sample["batch"] = {"value": None, "why": "no model server configured"}
            sample["tokens"] = {"why": "no model server configured"}
        else:
            server = self.scraper.figures()
            if server["batch"].get("value") is None or "source" not in server["tokens"]:
                engine = self._engine_figures()
                why = server["batch"].get("why") or server["tokens"].get("why")
                if server["batch"].get("value") is None:
                    server["batch"] = {**engine["batch"], "server": why}
                if "source" not in server["tokens"]:
                    server["tokens"] = {**engine["tokens"], "server": why}
            else:
                self._engine_figures()  # keep the engine's own counters in step
            sample["batch"] = server["batch"]
            sample["tokens"] = server["tokens"]
            if "servers" in server:
                sample["servers"] = self._server_rows(server["servers"])
        sample["cache"] = self._cache_figures()
        return sample

    def _server_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each server's figures, with whether it answers and the calls it answered."""
        assert self.servers is not None
        members = {m.where: m for m in self.servers.members}
        models = {m.model for m in members.values()}
        for row in rows:
            m = members.get(row["where"])
            row["up"] = m is not None and m.down_since is None
            row["in_flight"] = m.in_flight if m is not None else None
            row["calls"] = m.calls_answered if m is not None else 0
            if m is not None and len(models) > 1 and m.model:
                row["model"] = m.model  # the writers' server and the others' told apart
        return rows

    def _cache_totals(self) -> tuple[int, int]:
        """Prompt tokens taken from the servers' caches, of those counted, so far."""
        assert self.servers is not None
        return (
            self.servers.total("cached_tokens_total"),
            self.servers.total("cache_counted_total"),
        )

    def _cache_figures(self) -> dict[str, Any]:
        """The share of prompt tokens the server took from its prefix cache since the last
        sample, by its own count on each finished call."""
        if self.servers is None:
            return {"why": "no model server configured"}
        cached, counted = self._cache_totals()
        d_cached, d_counted = cached - self._cache_mark[0], counted - self._cache_mark[1]
        self._cache_mark = (cached, counted)
        if counted == 0:
            return {"why": "the server gives no count of cached prompt tokens"}
        if d_counted <= 0:
            return {"why": "no call finished since the last sample"}
        return {
            "share": json_round(min(1.0, d_cached / d_counted), 3),
            "cached": d_cached,
            "prompt": d_counted,
            "source": "the server's own count on each call",
        }

    def _canary_figures(self) -> dict[str, Any]:
        """The reviewers' scores on the night's canaries."""
        if self.artifacts is None:
            return {"n": 0}
        artifacts = self.artifacts
        return self._read_when_changed(
            canaries_path(artifacts), lambda: canary_scores(read_canaries(artifacts)), {"n": 0}
        )

    def _calibration_figures(self) -> list[dict[str, Any]]:
        """The reviewers' latest calibrations."""
        if self.artifacts is None:
            return []
        artifacts = self.artifacts
        return self._read_when_changed(
            calibration_path(artifacts), lambda: calibration_figures(artifacts), []
        )

    def _read_when_changed(self, path: Path, read: Callable[[], Any], missing: Any) -> Any:
        """``read()``, again only when the file at ``path`` changed size or time since the last
        sample (``missing`` while there is no file)."""
        try:
            st = path.stat()
        except OSError:
            return missing
        key = (st.st_size, st.st_mtime_ns)
        cached = self._files.get(path)
        if cached is None or cached[0] != key:
            cached = self._files[path] = (key, read())
        return cached[1]


def write_sample(artifacts: Path, sample: dict[str, Any]) -> None:
    append_line(metrics_path(artifacts), json.dumps(sample, ensure_ascii=False))


def read_samples(artifacts: Path, *, last: int | None = None) -> list[dict[str, Any]]:
    """The samples on disk, oldest first (``last``: the last that many readable ones); corrupt
    lines are skipped with one warning that names them."""
    path = metrics_path(artifacts)
    # from the end when only the last few are wanted: a corrupt last line hides nothing
    out, bad = read_jsonl(path, record=MetricsSample, last=last)
    if bad:
        numbers = [b.number for b in bad]
        log.warning(
            "%s: skipped %d corrupt line(s) (line %s)",
            path,
            len(numbers),
            ", ".join(map(str, numbers[:5])) + ("..." if len(numbers) > 5 else ""),
        )
    return out


def _fmt(value: Any, unit: str = "", nd: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return f"{value:.{nd}f}{unit}"
    return f"{value}{unit}"


def _untrusted(canaries: dict[str, Any]) -> str:
    """Why an acceptance rate says little: reviewers that pass most planted defects."""
    n, share = canaries.get("n") or 0, canaries.get("share")
    if not n or share is None or share >= 0.5:
        return ""
    return f"; the reviewers caught {canaries['caught']} of {n} canaries, so passing means little"


def _advice(sample: dict[str, Any]) -> str:
    """The concurrency advice: bounded by the server's slots, and led by the time to drain
    when the queue's jobs all arrived at once (ρ of a burst says little)."""
    rc = _fmt(sample.get("recommended_c"))
    if sample.get("recommended_by") == "slots":
        rc += f" (the server's {sample.get('slots')} slots: more only queues there)"
    drain = _fmt(sample.get("drain_s"), " s", 0)
    if sample.get("burst"):
        return (
            f"advice     drain in {drain} at c {sample.get('c')} (the jobs arrived at once: "
            f"ρ of a burst says little)  c for ρ ≤ 0.8: {rc}"
        )
    return f"advice     c for ρ ≤ 0.8: {rc}  drain in {drain}"


def server_line(row: dict[str, Any]) -> str:
    """One server: where (and its model, where they are of several), whether it answers, its
    batch, tokens/s and calls."""
    state = "up" if row.get("up") else "DOWN"
    model = f" ({row['model']})" if row.get("model") else ""
    return (
        f"{row.get('where', '?')}{model}  {state}  batch {_fmt(row.get('batch'))}  "
        f"generated {_fmt(row.get('generated'), '/s', 1)}  in flight {row.get('in_flight', '-')}  "
        f"answered {row.get('calls', 0)}"
        + (f"  ({row['why']})" if row.get("why") and not row.get("up") else "")
    )


def sample_text(sample: dict[str, Any]) -> str:
    """One sample in plain text, for ``pantheon status``."""
    batch, tokens = sample.get("batch") or {}, sample.get("tokens") or {}
    lines = [
        f"sample     {sample.get('t', '?')}",
        f"queue      depth {sample.get('depth')}  running {sample.get('running')}  "
        f"c {sample.get('c')}  λ {_fmt(sample.get('lambda'), '/s', 3)}  "
        f"μ {_fmt(sample.get('mu'), '/s', 3)}  ρ {_fmt(sample.get('rho'))}  "
        f"P(wait) {_fmt(sample.get('p_wait'))}  wait "
        + (
            "∞ (ρ ≥ 1: the queue grows)"
            if sample.get("stable") is False
            else _fmt(sample.get("wait_s"), " s", 1)
        ),
        _advice(sample),
    ]
    tuning = sample.get("tuning")
    if isinstance(tuning, dict):
        curve = ", ".join(
            f"c={lv['c']} {lv['tokens_per_s']:.1f}" for lv in tuning.get("curve") or []
        )
        lines.append(
            f"auto       {tuning.get('note') or tuning.get('phase')}"
            + (f" (measured tokens/s: {curve})" if curve else "")
        )
    b = batch.get("value")
    lines.append(f"server     batch {_fmt(b)} ({batch.get('source') or batch.get('why', '-')})")
    cache = sample.get("cache") or {}
    if "source" in tokens:
        lines.append(
            f"tokens/s   prompt {_fmt(tokens.get('prompt'), '', 1)}  generated "
            f"{_fmt(tokens.get('generated'), '', 1)} ({tokens['source']})"
            + (f"  cache {cache['share']:.0%} of prompt" if "share" in cache else "")
        )
    else:
        lines.append(f"tokens/s   - ({tokens.get('why', 'unavailable')})")
    for row in sample.get("servers") or []:
        lines.append(f"  {server_line(row)}")
    share = sample.get("review_pass_rate")
    lines.append(
        f"reviews    κ {_fmt(sample.get('kappa'))} over {sample.get('kappa_pairs', 0)} pairs"
        + (f" ({sample['kappa_note']})" if sample.get("kappa_note") else "")
        + (f", {share:.0%} of verdicts pass" if isinstance(share, int | float) else "")
        + ("  MERGES PAUSED" if sample.get("merges_paused") else "")
    )
    canaries = sample.get("canaries") or {}
    calibration = sample.get("calibration") or []
    blind = blind_gates(calibration, (canaries.get("by_change") or {}).keys())
    blind_note = "; the reviewers carry no measured information: merges not paused on them"
    lines.append(f"canaries   {canary_text(canaries)}" + (blind_note if blind else ""))
    lines.append(f"reviewers  {calibration_text(calibration)}")
    if sample.get("accepted_per_hour") is not None:
        lines.append(
            f"accepted   ≈ {sample['accepted_per_hour']:.1f} changes/hour "
            f"(review pass rate {sample.get('review_pass_rate'):.2f}, both must pass)"
            + _untrusted(sample.get("canaries") or {})
        )
    return "\n".join(lines)
