"""Live metrics: server scrapes, samples, κ that pauses merges, the Prometheus endpoint."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
from pydantic import BaseModel

from pantheon.core import Agent, Engine, JobQueue, enqueue, parse_flow
from pantheon.core.model.client import LLMClient
from pantheon.core.observe.metrics import MetricsSampler, ServerScraper, read_samples, sample_text
from pantheon.core.observe.status import status_text
from pantheon.core.store.control import ControlFile

LLAMA = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total {prompt}
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total {gen}
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing {running}
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode {busy}
"""

VLLM = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="q"}} {running}
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{model_name="q"}} {prompt}
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{model_name="q"}} {gen}
"""


def scraper_over(pages):
    def handler(request):
        page = pages.pop(0)
        if isinstance(page, Exception):
            raise page
        if isinstance(page, int):
            return httpx.Response(page)
        return httpx.Response(200, text=page)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return ServerScraper("http://127.0.0.1:9", http), http


async def test_llama_cpp_batch_and_token_rates():
    scraper, http = scraper_over(
        [
            LLAMA.format(prompt=100, gen=50, running=3, busy=2.5),
            LLAMA.format(prompt=300, gen=150, running=5, busy=3.5),
        ]
    )
    await scraper.poll()
    await asyncio.sleep(0.05)
    await scraper.poll()
    figures = scraper.figures()
    await http.aclose()
    assert figures["batch"]["value"] == 3.5
    assert "llama.cpp /metrics" in figures["batch"]["source"]
    tokens = figures["tokens"]
    assert tokens["generated"] > 0 and tokens["prompt"] == pytest.approx(
        2 * tokens["generated"], rel=1e-3
    )
    assert tokens["source"] == "llama.cpp /metrics"


async def test_an_idle_llama_server_has_no_batch_though_its_gauge_holds_the_last():
    """llama-server's busy-slots gauge keeps its last decode's value while nothing runs (the
    server waiting for its turn on the CPU): the batch of those seconds is 0, not that."""
    scraper, http = scraper_over(
        [LLAMA.format(prompt=300, gen=150, running=0, busy=3.5) for _ in range(2)]
    )
    await scraper.poll()
    await scraper.poll()
    figures = scraper.figures()
    await http.aclose()
    assert figures["batch"]["value"] == 0.0
    assert figures["batch"]["source"] == "llama.cpp /metrics (no request running)"


async def test_vllm_batch_is_the_time_averaged_running_gauge():
    scraper, http = scraper_over(
        [VLLM.format(running=r, prompt=10 * i, gen=5 * i) for i, r in enumerate((2, 4, 6))]
    )
    for _ in range(3):
        await scraper.poll()
    figures = scraper.figures()
    await http.aclose()
    assert figures["batch"]["value"] == 4.0
    assert "time-averaged" in figures["batch"]["source"]
    assert figures["tokens"]["source"] == "vllm /metrics"


@pytest.mark.parametrize(
    ("page", "why"),
    [
        (404, "has no http://127.0.0.1:9/metrics"),
        ("<html>not metrics</html>\n{{{", "is not Prometheus text"),
        ("# TYPE x gauge\nx 1\n", "none of the llama.cpp, vLLM or OpenVINO token counters"),
        (httpx.ReadTimeout("slow"), "timed out"),
        (httpx.ConnectError("refused"), "is not answering"),
    ],
)
async def test_a_bad_metrics_endpoint_marks_the_figure_unavailable(page, why):
    scraper, http = scraper_over([page])
    await scraper.poll()
    figures = scraper.figures()
    await http.aclose()
    assert figures["batch"]["value"] is None and why in figures["batch"]["why"]


async def test_without_server_metrics_the_engine_figures_stand_in(artifacts):
    def handler(request):
        if request.url.path == "/metrics":
            return httpx.Response(404)
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"content": "{}"}}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 20},
            },
        )

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    llm = LLMClient("http://127.0.0.1:9", http=http)
    with JobQueue(artifacts) as q:
        sampler = MetricsSampler(q, llm=llm)
        await llm.chat([{"role": "user", "content": "x"}])
        await sampler.poll()
        sampler._observed.at -= 2.0  # a rate needs an interval of a second or more
        sample = sampler.sample(concurrency=4, merges_paused=False)
    await http.aclose()
    assert sample["tokens"]["source"].startswith("engine")
    assert sample["tokens"]["generated"] > 0
    assert "has no" in sample["tokens"]["server"]
    assert sample["batch"]["source"].startswith("engine")
    # a server that gives no count of its cached prompt tokens has no cache share, and says so
    assert sample["cache"] == {"why": "the server gives no count of cached prompt tokens"}


def test_the_report_sums_the_servers_cache_counts_over_the_night(artifacts):
    from pantheon.core.morning.report import write_report
    from pantheon.core.observe.metrics import write_sample

    JobQueue(artifacts).close()
    for cached, prompt in ((300, 1000), (900, 1000)):
        write_sample(artifacts, {"ts": time.time(), "cache": {"cached": cached, "prompt": prompt}})
    write_sample(artifacts, {"ts": time.time(), "cache": {"why": "no call finished"}})
    summary, _ = write_report(artifacts)
    assert summary["figures"]["prompt_cache"] == {"cached": 1200, "prompt": 2000, "share": 0.6}
    assert "prompt from cache" in (artifacts / "report.html").read_text()


def _fake_jobs(artifacts, n_done, service_s, arrivals):
    with JobQueue(artifacts) as q:
        ids = q.enqueue(
            flow="f",
            flow_sha="s",
            flow_source="x",
            flow_text="t",
            first_agent="a",
            inputs=[{}] * arrivals,
        )
        now = time.time()
        # arrivals spread over the last minute
        q._db.executemany(
            "UPDATE jobs SET created=? WHERE id=?",
            [(now - 60 + k * 60 / arrivals, i) for k, i in enumerate(ids)],
        )
        q._db.executemany(
            "UPDATE jobs SET status='done', started=?, finished=? WHERE id=?",
            [(now - service_s, now, i) for i in ids[:n_done]],
        )
    return ids


def test_a_sample_has_the_queue_math(artifacts):
    _fake_jobs(artifacts, n_done=10, service_s=4.0, arrivals=60)
    with JobQueue(artifacts) as q:
        sample = MetricsSampler(q, window_s=60.0).sample(concurrency=2, merges_paused=False)
    assert sample["depth"] == 50 and sample["done"] == 10
    assert sample["lambda"] == pytest.approx(1.0, rel=1e-3)  # 60 arrivals in 60 s
    assert sample["mu"] == pytest.approx(0.25, rel=1e-3)  # 4 s per job
    assert sample["rho"] == pytest.approx(2.0, rel=1e-3) and sample["stable"] is False
    assert sample["p_wait"] == 1.0 and sample["wait_s"] is None
    assert sample["recommended_c"] >= 5
    assert sample["drain_s"] == pytest.approx(100.0, rel=1e-3)  # 50 jobs / (2 x 0.25/s)
    assert sample["kappa"] is None and sample["kappa_pairs"] == 0
    json.dumps(sample, allow_nan=False)
    assert "ρ 2.00" in sample_text(sample)


def test_the_advice_is_bounded_by_the_servers_slots_and_a_burst_leads_with_the_drain(artifacts):
    """All 60 jobs enqueued at once, 10 done at 4 s each: the queue math alone asks for c in
    the tens, which a server of 4 slots only queues."""
    ids = _fake_jobs(artifacts, n_done=10, service_s=4.0, arrivals=60)
    with JobQueue(artifacts) as q:
        q._db.executemany(
            "UPDATE jobs SET created=? WHERE id=?", [(time.time() - 60, i) for i in ids]
        )
        free = MetricsSampler(q, window_s=300.0).sample(concurrency=4, merges_paused=False)
        sample = MetricsSampler(q, window_s=300.0, slots=4).sample(
            concurrency=4, merges_paused=False
        )
    assert free["recommended_c"] > 4 and free["recommended_by"] is None
    assert sample["recommended_c"] == 4 and sample["recommended_by"] == "slots"
    assert sample["burst"] is True
    text = sample_text(sample)
    advice = next(line for line in text.splitlines() if line.startswith("advice"))
    assert advice.startswith("advice     drain in 50 s at c 4 (the jobs arrived at once")
    assert "c for ρ ≤ 0.8: 4 (the server's 4 slots: more only queues there)" in advice


def test_jobs_arriving_over_time_are_no_burst(artifacts):
    _fake_jobs(artifacts, n_done=10, service_s=4.0, arrivals=60)  # spread over a minute
    with JobQueue(artifacts) as q:
        sample = MetricsSampler(q, window_s=60.0, slots=64).sample(
            concurrency=2, merges_paused=False
        )
    assert sample["burst"] is False and sample["recommended_by"] is None
    assert "advice     c for ρ ≤ 0.8: " in sample_text(sample)


def test_a_young_night_is_measured_over_its_own_age(artifacts):
    """Twelve jobs enqueued ten seconds ago: λ is 1.2/s, not 12 / 300 s."""
    with JobQueue(artifacts) as q:
        q.enqueue(
            flow="f",
            flow_sha="s",
            flow_source="x",
            flow_text="t",
            first_agent="a",
            inputs=[{}] * 12,
        )
        q._db.execute("UPDATE jobs SET created = ?", (time.time() - 10,))
        sample = MetricsSampler(q, window_s=300.0).sample(concurrency=4, merges_paused=False)
    assert sample["lambda"] == pytest.approx(1.2, rel=0.02)
    assert sample["window_s"] == pytest.approx(10, abs=0.5)


def test_corrupt_lines_are_skipped_with_a_warning(artifacts, caplog):
    path = artifacts / "metrics" / "engine.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"depth": 1}\n{"depth": 2, "trunc\n[1, 2]\n{"depth": 3}\n')
    assert [s["depth"] for s in read_samples(artifacts)] == [1, 3]
    assert "skipped 2 corrupt line(s) (line 2, 3)" in caplog.text


def test_a_corrupt_last_line_does_not_hide_the_last_good_sample(artifacts, tmp_path):
    from pantheon.core.observe.status import status_text

    path = artifacts / "metrics" / "engine.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"depth": 1}\n{"depth": 2, "kappa": 0.5}\n{"depth": 3, "tru\n')
    assert [s["depth"] for s in read_samples(artifacts, last=1)] == [2]
    assert [s["depth"] for s in read_samples(artifacts, last=5)] == [1, 2]
    from pantheon.core import JobQueue

    JobQueue(artifacts).close()
    assert "κ 0.50" in status_text(artifacts)


class Reviewer(Agent):
    name = "t.reviewer"
    description = "passes when its input says so"
    gate = True
    reviewer = True

    class Input(BaseModel):
        verdict: bool

    class Output(BaseModel):
        passed: bool
        reasons: list[str]

    async def run(self, input, ctx):
        return self.Output(passed=input.verdict, reasons=[] if input.verdict else ["no"])


REVIEWED = """\
name: reviewed
input: {a: bool, b: bool}
nodes:
  - {id: r1, agent: t.reviewer, inputs: {verdict: $input.a}}
  - {id: r2, agent: t.reviewer, inputs: {verdict: $input.b}}
"""


def test_low_reviewer_agreement_pauses_merges_with_the_reason(artifacts, registry):
    registry.register(Reviewer, origin="tests")
    flow = parse_flow(REVIEWED, registry)
    # 24 pairs, reviewers agree on half: κ = 0
    inputs = [{"a": True, "b": True}] * 6 + [{"a": False, "b": False}] * 6
    inputs += [{"a": True, "b": False}] * 6 + [{"a": False, "b": True}] * 6
    with JobQueue(artifacts) as q:
        enqueue(q, flow, inputs)
    engine = Engine(
        artifacts,
        registry,
        until_empty=True,
        tick_s=0.01,
        metrics_every_s=0.05,
        kappa_min_pairs=20,
    )
    asyncio.run(engine.run())
    control = ControlFile(artifacts).read()
    assert control.merges_paused is True
    # paused at the first sample with 20 or more pairs: κ was under 0.6 from then on
    reason = re.fullmatch(r"κ (-?[0-9.]+) over the last (\d+) pairs", control.merges_paused_reason)
    assert reason and float(reason[1]) < 0.6 and 20 <= int(reason[2]) <= 24
    assert control.updated_by == "engine"
    samples = read_samples(artifacts)
    assert samples[-1]["kappa"] == 0.0 and samples[-1]["kappa_pairs"] == 24
    assert samples[-1]["merges_paused"] is True
    assert samples[-1]["review_pass_rate"] == 0.5
    assert samples[-1]["accepted_per_hour"] > 0
    assert "κ 0.00 over 24 pairs, 50% of verdicts pass  MERGES PAUSED" in status_text(artifacts)


def test_agreeing_reviewers_keep_merges_going_and_a_pause_stays(artifacts, registry):
    registry.register(Reviewer, origin="tests")
    flow = parse_flow(REVIEWED, registry)
    with JobQueue(artifacts) as q:
        enqueue(q, flow, [{"a": True, "b": True}] * 22 + [{"a": False, "b": False}] * 3)
    ControlFile(artifacts).update(by="op", merges_paused=True, merges_paused_reason="by hand")
    asyncio.run(Engine(artifacts, registry, until_empty=True, metrics_every_s=0.05).run())
    control = ControlFile(artifacts).read()
    assert control.merges_paused and control.merges_paused_reason == "by hand"
    assert read_samples(artifacts)[-1]["kappa"] == 1.0
    ControlFile(artifacts).update(by="op", merges_paused=False)
    asyncio.run(Engine(artifacts, registry, until_empty=True, metrics_every_s=0.05).run())
    assert ControlFile(artifacts).read().merges_paused is False


async def test_the_engine_serves_its_figures_to_prometheus(artifacts, registry):
    flow = parse_flow(
        "name: e\nnodes:\n  - {id: a, agent: util.echo, params: {delay_s: 0.3}}\n", registry
    )
    with JobQueue(artifacts) as q:
        enqueue(q, flow, [{}] * 6)
    from pantheon.core.observe.canaries import record_canary

    verdicts = {"review_a": {"passed": False}, "review_b": {"passed": True}}
    record_canary(artifacts, {"run": "r", "kind": "cut", "verdicts": verdicts})
    from pantheon.core.observe.quality import Calibration, write_calibration

    measured = {"model": "m", "threshold": 0.5, "max_defects_through": 0.2, "good": 9, "bad": 9}
    write_calibration(
        artifacts,
        [
            Calibration(
                reviewer="gate",
                kind="docs",
                auroc=0.61,
                low=0.28,
                high=0.94,
                defects_caught=0.8,
                good_passed=0.2,
                **measured,
            )
        ],
    )
    engine = Engine(artifacts, registry, until_empty=True, metrics_every_s=0.05, metrics_port=0)
    task = asyncio.create_task(engine.run())
    for _ in range(100):
        await asyncio.sleep(0.05)
        if engine.exporter is not None and engine.last_sample is not None:
            break
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{engine.exporter.port}/metrics")).text
    await task
    assert "pantheon_queue_depth" in text and "pantheon_concurrency 4.0" in text
    assert "pantheon_reviewer_kappa" in text
    assert 'pantheon_canaries{outcome="caught",reviewer="gate"} 1.0' in text
    assert 'pantheon_canaries{outcome="missed",reviewer="review_b"} 1.0' in text
    assert 'pantheon_reviewer_auroc{bound="low",kind="docs",reviewer="gate"} 0.28' in text
    assert 'pantheon_reviewer_informative{kind="docs",reviewer="gate"} 0.0' in text


async def test_a_rate_over_a_sliver_of_time_is_not_reported(artifacts):
    def handler(request):
        return httpx.Response(404)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    llm = LLMClient("http://127.0.0.1:9", http=http)
    with JobQueue(artifacts) as q:
        sampler = MetricsSampler(q, llm=llm)
        await sampler.poll()
        sample = sampler.sample(concurrency=4, merges_paused=False)
    await http.aclose()
    assert "source" not in sample["tokens"] and "too short" in sample["tokens"]["why"]


async def test_a_pool_of_servers_is_sampled_summed_and_each_on_its_own(artifacts):
    """Two llama-servers: the sample's batch and tokens/s are their sums, and ``servers`` holds
    each one's figures; a server whose /metrics is gone is named down in `pantheon status`."""
    from pantheon.core.model.pool import ServerPool

    pages = {
        8101: [LLAMA.format(prompt=0, gen=0, running=2, busy=2.0)]
        + [LLAMA.format(prompt=400, gen=100, running=2, busy=2.0)] * 10,
        8102: [LLAMA.format(prompt=0, gen=0, running=1, busy=1.5)]
        + [LLAMA.format(prompt=200, gen=50, running=1, busy=1.5)] * 10,
    }

    def member(port: int) -> LLMClient:
        def handler(request):
            if request.url.path == "/props":
                return httpx.Response(200, json={"total_slots": 4})
            page = pages[port].pop(0)
            return httpx.Response(200, text=page)

        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        return LLMClient(f"http://127.0.0.1:{port}", http=http)

    pool = ServerPool([member(8101), member(8102)])
    with JobQueue(artifacts) as queue:
        sampler = MetricsSampler(queue, llm=pool)
        await sampler.poll()
        await asyncio.sleep(0.05)
        await sampler.poll()
        sample = sampler.sample(concurrency=4, merges_paused=False)
    await pool.aclose()
    assert sample["batch"]["value"] == 3.5
    assert sample["batch"]["source"] == "2 servers' /metrics (summed)"
    assert sample["tokens"]["generated"] > sample["servers"][1]["generated"] > 0
    assert sample["slots"] == 8
    first, second = sample["servers"]
    assert first["where"] == "127.0.0.1:8101" and first["batch"] == 2.0 and first["up"]
    assert second["batch"] == 1.5
    second["up"] = False
    text = sample_text(sample)
    assert "127.0.0.1:8101  up  batch 2.00" in text
    assert "127.0.0.1:8102  DOWN" in text


def test_the_nights_model_figures_count_the_canaries_reviews_and_no_tool(tmp_path):
    """The closing "model" line sums every model call of the night: the nodes' and the
    canaries' reviews (a folder deeper), and a tool the model ran is no call."""
    from pantheon.core.run.demo import night_figures

    def write(path, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    call = {"at": "2026-12-04T02:00:00+00:00", "prompt_tokens": 100, "completion_tokens": 10}
    write(tmp_path / "runs/docops-000001/review_a/calls.jsonl", [{**call, "cached_tokens": 50}])
    write(
        tmp_path / "runs/docops-000001/canary/review_a/calls.jsonl",
        [{**call, "at": "2026-12-04T02:00:10+00:00", "cached_tokens": 90}],
    )
    write(tmp_path / "runs/codefix-000002/code/calls.jsonl", [{"kind": "tool", "error": "no"}])
    text = night_figures(tmp_path)
    assert "2 calls (0 unusable)" in text
    assert "200 prompt (70% of them from the server's cache) + 20 generated tokens" in text


async def test_a_night_of_two_models_is_sampled_over_both_servers(artifacts):
    """The writers' server and the others' (the engine's client and an agent's): tokens/s,
    batch and the cache share are of both, and each is a row of its own, named by its model."""
    pages = {
        8101: [LLAMA.format(prompt=0, gen=0, running=1, busy=1.0)]
        + [LLAMA.format(prompt=300, gen=60, running=1, busy=1.0)] * 10,
        8102: [LLAMA.format(prompt=0, gen=0, running=2, busy=2.0)]
        + [LLAMA.format(prompt=100, gen=30, running=2, busy=2.0)] * 10,
    }

    def server(port: int, model: str) -> LLMClient:
        def handler(request):
            if request.url.path == "/props":
                return httpx.Response(200, json={"total_slots": 4})
            return httpx.Response(200, text=pages[port].pop(0))

        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        return LLMClient(f"http://127.0.0.1:{port}", http=http, model=model)

    others, writers = server(8101, "qwen2.5-coder-0.5b"), server(8102, "qwen2.5-coder-1.5b")
    with JobQueue(artifacts) as queue:
        sampler = MetricsSampler(queue, llm=others, others=[writers, writers])
        others.cached_tokens_total, others.cache_counted_total = 50, 100
        writers.cached_tokens_total, writers.cache_counted_total = 250, 300
        writers.calls_answered = 3
        await sampler.poll()
        await asyncio.sleep(0.05)
        await sampler.poll()
        sample = sampler.sample(concurrency=4, merges_paused=False)
    await others.aclose()
    await writers.aclose()
    assert sample["batch"]["value"] == 3.0
    assert sample["tokens"]["generated"] > sample["servers"][1]["generated"] > 0
    assert sample["cache"]["share"] == 0.75  # 300 of 400, not the first server's 50 %
    first, second = sample["servers"]  # each server once, though two agents ask the writers'
    assert first["model"] == "qwen2.5-coder-0.5b" and first["calls"] == 0
    assert second["model"] == "qwen2.5-coder-1.5b" and second["calls"] == 3
    assert "127.0.0.1:8102 (qwen2.5-coder-1.5b)  up  batch 2.00" in sample_text(sample)
