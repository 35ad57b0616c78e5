"""The model server's own figures, scraped from its Prometheus ``/metrics`` (llama.cpp, vLLM
and OpenVINO names): the average batch size, and tokens/s from its counters; for several
servers, their sums and each one's own.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["SERVER_NAMES", "ScraperGroup", "ServerScraper", "json_round"]

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
    "openvino": {
        "running": "openvino:num_requests_running",
        "prompt": "openvino:prompt_tokens_total",
        "generated": "openvino:generation_tokens_total",
    },
}


def json_round(x: float | None, nd: int = 4) -> float | None:
    """``x`` rounded to ``nd`` digits, and None for what JSON cannot hold (inf: an unstable
    queue; nan)."""
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
            raise ValueError(
                f"{self.url} has none of the llama.cpp, vLLM or OpenVINO token counters"
            )
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
        if self._running and max(self._running) == 0:
            # nothing ran since the last figures: llama-server's busy-slots gauge still holds
            # its last decode's (a server idle while the other one of a night takes its turn)
            batch = {"value": 0.0, "source": f"{source} (no request running)"}
        elif names.get("batch") in last.values and last.values[names["batch"]] > 0:
            batch = {
                "value": json_round(last.values[names["batch"]]),
                "source": f"{source} (busy slots per decode)",
            }
        elif self._running:
            batch = {
                "value": json_round(sum(self._running) / len(self._running)),
                "source": f"{source} (running requests, time-averaged)",
            }
        else:
            batch = {"value": None, "why": "no running-requests gauge"}
        tokens: dict[str, Any]
        if mark is not None and last.at > mark.at:
            dt = last.at - mark.at
            tokens = {
                "prompt": json_round(
                    max(
                        0.0,
                        last.values.get(names["prompt"], 0.0)
                        - mark.values.get(names["prompt"], 0.0),
                    )
                    / dt,
                    2,
                ),
                "generated": json_round(
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


class ScraperGroup:
    """The scrapers of several model servers, read as one: batch sizes and token rates summed
    over the servers that answer, and each server's own figures beside them."""

    def __init__(self, scrapers: list[tuple[str, ServerScraper]]) -> None:
        self.scrapers = scrapers
        """(where, scraper) of each server."""

    async def poll(self) -> None:
        await asyncio.gather(*(s.poll() for _, s in self.scrapers))

    def figures(self) -> dict[str, Any]:
        parts = [(where, s.figures()) for where, s in self.scrapers]
        servers = [
            {
                "where": where,
                "batch": f["batch"].get("value"),
                "generated": f["tokens"].get("generated"),
                "prompt": f["tokens"].get("prompt"),
                "why": f["batch"].get("why") or f["tokens"].get("why"),
            }
            for where, f in parts
        ]
        n = len(parts)
        batches = [f["batch"]["value"] for _, f in parts if f["batch"].get("value") is not None]
        batch: dict[str, Any]
        if batches:
            batch = {"value": json_round(sum(batches)), "source": f"{n} servers' /metrics (summed)"}
        else:
            batch = {"value": None, "why": parts[0][1]["batch"].get("why") if parts else "none"}
        rated = [f["tokens"] for _, f in parts if "source" in f["tokens"]]
        tokens: dict[str, Any]
        if rated:
            tokens = {
                "prompt": json_round(sum(t.get("prompt") or 0.0 for t in rated), 2),
                "generated": json_round(sum(t.get("generated") or 0.0 for t in rated), 2),
                "source": f"{n} servers' /metrics (summed)",
            }
        else:
            tokens = {"why": parts[0][1]["tokens"].get("why") if parts else "none"}
        return {"batch": batch, "tokens": tokens, "servers": servers}
