"""The engine's own figures in the Prometheus text format, served on loopback
(``--metrics-port``)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

__all__ = ["PrometheusExporter"]


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
        self._auroc = Gauge(
            "pantheon_reviewer_auroc",
            "A reviewer's AUROC on held-out labelled changes ('gate': both), with its 95% "
            "interval's bounds (`pantheon reviewers calibrate`)",
            ["kind", "reviewer", "bound"],
            registry=self.registry,
        )
        self._informative = Gauge(
            "pantheon_reviewer_informative",
            "1 when the reviewer's AUROC interval lies above 0.5, 0 when it holds 0.5",
            ["kind", "reviewer"],
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
        for cal in sample.get("calibration") or []:
            who = {"kind": cal["kind"], "reviewer": cal["reviewer"]}
            for bound, key in (("value", "auroc"), ("low", "low"), ("high", "high")):
                self._auroc.labels(**who, bound=bound).set(float(cal[key]))
            self._informative.labels(**who).set(1.0 if cal.get("informative") else 0.0)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
