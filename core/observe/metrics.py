"""Live figures of the night, computed headless and written to ``artifacts/metrics/engine.jsonl``.

Every sample (default every 2 s) holds the queue (depth, running, done, failed), the queue math
(λ, μ per worker, c, ρ, Erlang-C P(wait), expected wait, the c to ask for, time to drain), the
model server's average batch size and tokens/s — scraped from its own Prometheus ``/metrics``
(llama.cpp and vLLM names), or else what the engine itself observed, and each figure says which —
and reviewer agreement κ over the last review pairs. The console, the report and any other tool
read the same file; a corrupt line is skipped with a warning, never a crash.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pantheon.core.model.client import LLMClient
from pantheon.core.observe.canaries import canaries_path, canary_scores, canary_text, read_canaries
from pantheon.core.observe.queuemath import (
    cohen_kappa,
    erlang_c,
    expected_accepted,
    expected_wait,
    recommended_concurrency,
    utilization,
)
from pantheon.core.store.atomic import append_line
from pantheon.core.store.queue import JobQueue

__all__ = [
    "METRICS_FILE",
    "MetricsSampler",
    "ServerScraper",
    "read_samples",
    "sample_text",
]

log = logging.getLogger(__name__)

METRICS_FILE = Path("metrics") / "engine.jsonl"

# what each server calls the figures we need
SERVER_NAMES: dict[str, dict[str, str]] = {
    "llama.cpp": {
        "running": "llamacpp:requests_processing",
        "batch": "llamacpp:n_busy_slots_per_decode",
        "prompt": "llamacpp:prompt_tokens_total",
        "generated": "llamacpp:tokens_predicted_total",
    },
    "vllm": {
        "running": "vllm:num_requests_running",
        "prompt": "vllm:prompt_tokens_total",
        "generated": "vllm:generation_tokens_total",
    },
}


def _r(x: float | None, nd: int = 4) -> float | None:
    """Rounded, and None for what JSON cannot hold (inf: an unstable queue; nan)."""
    if x is None or math.isnan(x) or math.isinf(x):
        return None
    return round(x, nd)


@dataclass
class _Scrape:
    at: float
    values: dict[str, float]
    dialect: str


class ServerScraper:
    """Scrapes a model server's ``/metrics`` and turns counters into rates.

    ``poll()`` is called often (every ~0.5 s) to time-average the running-requests gauge;
    ``figures()`` returns the batch size and tokens/s since the previous call.
    """

    def __init__(self, base_url: str, http: httpx.AsyncClient, *, timeout_s: float = 1.0):
        self.url = base_url.rstrip("/") + "/metrics"
        self.http = http
        self.timeout_s = timeout_s
        self.error: str | None = None
        self._last: _Scrape | None = None
        self._mark: _Scrape | None = None
        self._running: list[float] = []

    async def scrape(self) -> _Scrape:
        try:
            resp = await self.http.get(self.url, timeout=self.timeout_s)
        except httpx.TimeoutException:
            raise ValueError(f"{self.url} timed out after {self.timeout_s:.1f} s") from None
        except httpx.TransportError as exc:
            raise ValueError(f"{self.url} is not answering ({type(exc).__name__})") from None
        if resp.status_code == 404 or resp.status_code == 501:
            raise ValueError(f"the server has no {self.url} (llama-server needs --metrics)")
        if resp.status_code != 200:
            raise ValueError(f"{self.url} answered HTTP {resp.status_code}")
        values: dict[str, float] = {}
        try:
            for family in text_string_to_metric_families(resp.text):
                for sample in family.samples:
                    values[sample.name] = values.get(sample.name, 0.0) + float(sample.value)
        except Exception as exc:  # the parser raises bare ValueErrors and worse on garbage
            raise ValueError(f"{self.url} is not Prometheus text ({exc})") from None
        dialect = next((d for d, names in SERVER_NAMES.items() if names["generated"] in values), "")
        if not dialect:
            raise ValueError(f"{self.url} has none of the llama.cpp or vLLM token counters")
        return _Scrape(time.monotonic(), values, dialect)

    async def poll(self) -> None:
        try:
            s = await self.scrape()
        except ValueError as exc:
            self.error = str(exc)
            return
        self.error = None
        self._last = s
        if self._mark is None:
            self._mark = s
        name = SERVER_NAMES[s.dialect]["running"]
        if name in s.values:
            self._running.append(s.values[name])

    def figures(self) -> dict[str, Any]:
        """Batch size and tokens/s since the previous call, each with its source."""
        last, mark = self._last, self._mark
        if last is None or self.error is not None:
            why = self.error or "no scrape yet"
            return {"batch": {"value": None, "why": why}, "tokens": {"why": why}}
        names = SERVER_NAMES[last.dialect]
        source = f"{last.dialect} /metrics"
        batch: dict[str, Any]
        if names.get("batch") in last.values and last.values[names["batch"]] > 0:
            batch = {
                "value": _r(last.values[names["batch"]]),
                "source": f"{source} (busy slots per decode)",
            }
        elif self._running:
            batch = {
                "value": _r(sum(self._running) / len(self._running)),
                "source": f"{source} (running requests, time-averaged)",
            }
        else:
            batch = {"value": None, "why": "no running-requests gauge"}
        tokens: dict[str, Any]
        if mark is not None and last.at > mark.at:
            dt = last.at - mark.at
            tokens = {
                "prompt": _r(
                    max(
                        0.0,
                        last.values.get(names["prompt"], 0.0)
                        - mark.values.get(names["prompt"], 0.0),
                    )
                    / dt,
                    2,
                ),
                "generated": _r(
                    max(
                        0.0,
                        last.values.get(names["generated"], 0.0)
                        - mark.values.get(names["generated"], 0.0),
                    )
                    / dt,
                    2,
                ),
                "source": source,
            }
        else:
            tokens = {"why": "one scrape so far"}
        self._mark = last
        self._running = []
        return {"batch": batch, "tokens": tokens}


@dataclass
class _EngineObserved:
    """The engine's own view when the server exposes nothing."""

    at: float = field(default_factory=time.monotonic)
    prompt: int = 0
    completion: int = 0
    in_flight: list[int] = field(default_factory=list)


class MetricsSampler:
    """Builds one sample at a time from the queue, the controls and the model server."""

    def __init__(
        self,
        queue: JobQueue,
        *,
        llm: LLMClient | None = None,
        window_s: float = 300.0,
        kappa_window: int = 50,
        max_rho: float = 0.8,
        max_p_wait: float = 0.2,
        artifacts: Path | None = None,
    ) -> None:
        self.queue = queue
        self.artifacts = artifacts
        """Where the canaries are read from (None: no canary figures)."""
        self._canaries: tuple[tuple[int, int], dict[str, Any]] | None = None
        self.llm = llm
        self.window_s = window_s
        self.kappa_window = kappa_window
        self.max_rho = max_rho
        self.max_p_wait = max_p_wait
        self.scraper = ServerScraper(llm.base_url, llm._http) if llm is not None else None
        self._observed = _EngineObserved()
        if llm is not None:
            self._observed.prompt = llm.prompt_tokens_total
            self._observed.completion = llm.completion_tokens_total

    async def poll(self) -> None:
        """Called between samples: time-average the batch gauges."""
        if self.scraper is not None:
            await self.scraper.poll()
        if self.llm is not None:
            self._observed.in_flight.append(self.llm.in_flight)

    def _engine_figures(self) -> dict[str, Any]:
        llm, obs = self.llm, self._observed
        assert llm is not None
        now = time.monotonic()
        dt = now - obs.at
        flights = obs.in_flight or [llm.in_flight]
        out: dict[str, Any] = {
            "batch": {
                "value": _r(sum(flights) / len(flights)),
                "source": "engine (model calls in flight, time-averaged)",
            },
            "tokens": {
                "prompt": _r((llm.prompt_tokens_total - obs.prompt) / dt, 2),
                "generated": _r((llm.completion_tokens_total - obs.completion) / dt, 2),
                "source": "engine (usage of finished calls)",
            },
        }
        if dt < 1.0:  # a rate over a sliver of time (the last sample of a night) means nothing
            out["tokens"] = {"why": f"interval of {dt:.2f} s is too short for a rate"}
        self._observed = _EngineObserved(
            at=now, prompt=llm.prompt_tokens_total, completion=llm.completion_tokens_total
        )
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
        agents = {}
        for agent, row in win["agents"].items():
            agents[agent] = {
                "nodes": row["nodes"],
                "lambda": _r(row["nodes"] / span),
                "mu": _r(1.0 / row["mean_s"]) if row["mean_s"] else None,
                "pass_rate": _r(row["passed"] / row["nodes"]) if row["nodes"] else None,
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
            "lambda": _r(lam),
            "mu": _r(mu),
            "c": c,
            "rho": _r(rho),
            "p_wait": _r(p_wait),
            "wait_s": _r(wait, 2),
            "stable": None if rho is None else rho < 1.0,
            "recommended_c": recommended_concurrency(
                lam, mu, max_rho=self.max_rho, max_p_wait=self.max_p_wait
            ),
            "drain_s": _r(drain, 1),
            "kappa": _r(kappa.value),
            "kappa_pairs": kappa.pairs,
            "kappa_note": kappa.note,
            "review_pass_rate": _r(p_pass),
            "canaries": self._canary_figures(),
            "accepted_per_hour": _r(accepted, 1),
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
        return sample

    def _canary_figures(self) -> dict[str, Any]:
        """The reviewers' scores on the night's canaries (read again only when the file grew)."""
        if self.artifacts is None:
            return {"n": 0}
        path = canaries_path(self.artifacts)
        try:
            st = path.stat()
            key = (st.st_size, st.st_mtime_ns)
        except OSError:
            return {"n": 0}
        if self._canaries is None or self._canaries[0] != key:
            self._canaries = (key, canary_scores(read_canaries(self.artifacts)))
        return self._canaries[1]


def metrics_path(artifacts: Path) -> Path:
    return Path(artifacts) / METRICS_FILE


def write_sample(artifacts: Path, sample: dict[str, Any]) -> None:
    append_line(metrics_path(artifacts), json.dumps(sample, ensure_ascii=False))


def read_samples(artifacts: Path, *, last: int | None = None) -> list[dict[str, Any]]:
    """The samples on disk, oldest first (``last``: the last that many readable ones); corrupt
    lines are skipped with one warning that names them."""
    path = metrics_path(artifacts)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    bad: list[int] = []
    # from the end when only the last few are wanted: a corrupt last line hides nothing
    order = range(len(lines) - 1, -1, -1) if last is not None else range(len(lines))
    for i in order:
        if last is not None and len(out) >= last:
            break
        line = lines[i]
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            bad.append(i + 1)
            continue
        if isinstance(value, dict):
            out.append(value)
        else:
            bad.append(i + 1)
    if last is not None:
        out.reverse()
        bad.sort()
    if bad:
        log.warning(
            "%s: skipped %d corrupt line(s) (line %s)",
            path,
            len(bad),
            ", ".join(map(str, bad[:5])) + ("..." if len(bad) > 5 else ""),
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
        f"advice     c for ρ ≤ 0.8: {_fmt(sample.get('recommended_c'))}  "
        f"drain in {_fmt(sample.get('drain_s'), ' s', 0)}",
    ]
    b = batch.get("value")
    lines.append(f"server     batch {_fmt(b)} ({batch.get('source') or batch.get('why', '-')})")
    if "source" in tokens:
        lines.append(
            f"tokens/s   prompt {_fmt(tokens.get('prompt'), '', 1)}  generated "
            f"{_fmt(tokens.get('generated'), '', 1)} ({tokens['source']})"
        )
    else:
        lines.append(f"tokens/s   - ({tokens.get('why', 'unavailable')})")
    share = sample.get("review_pass_rate")
    lines.append(
        f"reviews    κ {_fmt(sample.get('kappa'))} over {sample.get('kappa_pairs', 0)} pairs"
        + (f" ({sample['kappa_note']})" if sample.get("kappa_note") else "")
        + (f", {share:.0%} of verdicts pass" if isinstance(share, int | float) else "")
        + ("  MERGES PAUSED" if sample.get("merges_paused") else "")
    )
    lines.append(f"canaries   {canary_text(sample.get('canaries'))}")
    if sample.get("accepted_per_hour") is not None:
        lines.append(
            f"accepted   ≈ {sample['accepted_per_hour']:.1f} changes/hour "
            f"(review pass rate {sample.get('review_pass_rate'):.2f}, both must pass)"
            + _untrusted(sample.get("canaries") or {})
        )
    return "\n".join(lines)


class PrometheusExporter:
    """The engine's own figures in the Prometheus text format, on loopback."""

    GAUGES: ClassVar[dict[str, tuple[str, str]]] = {
        "depth": ("pantheon_queue_depth", "Jobs waiting in the queue"),
        "running": ("pantheon_jobs_running", "Jobs running"),
        "done": ("pantheon_jobs_done", "Jobs done"),
        "failed": ("pantheon_jobs_failed", "Jobs failed"),
        "c": ("pantheon_concurrency", "Jobs the engine runs at once (c)"),
        "lambda": ("pantheon_arrival_rate", "Jobs arriving per second (lambda)"),
        "mu": ("pantheon_service_rate", "Jobs one worker finishes per second (mu)"),
        "rho": ("pantheon_utilization", "rho = lambda / (c mu)"),
        "p_wait": ("pantheon_wait_probability", "Erlang C probability that a job waits"),
        "kappa": ("pantheon_reviewer_kappa", "Cohen's kappa over the recent review pairs"),
        "kappa_pairs": ("pantheon_reviewer_pairs", "Review pairs behind kappa"),
    }

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self._gauges = {
            key: Gauge(name, doc, registry=self.registry)
            for key, (name, doc) in self.GAUGES.items()
        }
        self._batch = Gauge(
            "pantheon_batch_size", "Average batch size of the model server", registry=self.registry
        )
        self._tokens = Gauge(
            "pantheon_tokens_per_second",
            "Model server tokens per second",
            ["kind"],
            registry=self.registry,
        )
        self._canaries = Gauge(
            "pantheon_canaries",
            "Canaries (planted defects) judged, by reviewer ('gate': both) and outcome",
            ["reviewer", "outcome"],
            registry=self.registry,
        )
        self._paused = Gauge(
            "pantheon_merges_paused", "1 while merges are paused", registry=self.registry
        )
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = self._server.server_port

    def update(self, sample: dict[str, Any]) -> None:
        for key, gauge in self._gauges.items():
            value = sample.get(key)
            gauge.set(float(value) if isinstance(value, int | float) else math.nan)
        batch = (sample.get("batch") or {}).get("value")
        self._batch.set(float(batch) if batch is not None else math.nan)
        tokens = sample.get("tokens") or {}
        for kind in ("prompt", "generated"):
            value = tokens.get(kind)
            self._tokens.labels(kind=kind).set(float(value) if value is not None else math.nan)
        self._paused.set(1.0 if sample.get("merges_paused") else 0.0)
        canaries = sample.get("canaries") or {}
        scored = [("gate", canaries), *(canaries.get("reviewers") or {}).items()]
        for reviewer, score in scored:
            for outcome in ("caught", "missed"):
                value = float(score.get(outcome, 0) or 0)
                self._canaries.labels(reviewer=reviewer, outcome=outcome).set(value)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
