"""Reviewers as scorers: P(pass) from the verdict token's logprobs, a clear error where there is
none to read, AUROC with its interval, a threshold fit to the defects it lets through, and the
scored review agent."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from pantheon.core.agents.base import NodeContext
from pantheon.core.agents.review import WHY_FAILS, ReviewPeer
from pantheon.core.errors import ModelServerError, ReplyError
from pantheon.core.model.client import LLMClient
from pantheon.core.model.files import TEST_MODEL, ModelStore
from pantheon.core.model.safecall import CallLog
from pantheon.core.model.scoring import TOP_LOGPROBS, score_verdict
from pantheon.core.model.server import ModelServer, ServerConfig
from pantheon.core.observe.quality import auroc, fit_threshold, quality


def logprob_reply(top: list[tuple[str, float]] | None, text: str = "pass") -> httpx.Response:
    choice: dict = {"index": 0, "message": {"content": text}, "finish_reason": "length"}
    if top is not None:
        entries = [{"token": t, "logprob": lp} for t, lp in top]
        choice["logprobs"] = {
            "content": [{"token": top[0][0], "logprob": top[0][1], "top_logprobs": entries}]
        }
    return httpx.Response(200, json={"choices": [choice], "usage": {"completion_tokens": 1}})


def scripted(handler):
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        return handler(json.loads(request.content))

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    return LLMClient("http://127.0.0.1:9", http=http, retries=0), http


def run(coro_fn):
    async def go():
        llm, http = coro_fn[0]
        try:
            return await coro_fn[1](llm)
        finally:
            await http.aclose()

    return asyncio.run(go())


MESSAGES = [{"role": "user", "content": "Answer with one word: pass or fail."}]


def test_p_pass_is_the_mass_of_pass_over_pass_and_fail(tmp_path):
    bodies = []
    top = [("pass", -0.5), ("The", -2.0), ("fail", -1.6), (" Pass", -3.0), ("Fa", -9.0)]

    def answer(body):
        bodies.append(body)
        return logprob_reply(top)

    log = CallLog(tmp_path / "review_a")
    log.path.parent.mkdir()
    score = run((scripted(answer), lambda llm: score_verdict(llm, MESSAGES, log=log)))
    p, f = math.exp(-0.5) + math.exp(-3.0), math.exp(-1.6)
    assert score.p_pass == pytest.approx(p / (p + f))
    assert score.mass == pytest.approx(p + f) and score.said == "pass"
    [body] = bodies
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0
    assert body["logprobs"] is True and body["top_logprobs"] == TOP_LOGPROBS
    [call] = log.read()
    assert call["kind"] == "score" and call["parsed"]["p_pass"] == pytest.approx(p / (p + f))


def test_a_server_without_logprobs_is_a_clear_error_never_a_guess(tmp_path):
    log = CallLog(tmp_path / "review_a")
    log.path.parent.mkdir()
    with pytest.raises(ModelServerError, match="returned no logprobs"):
        run(
            (
                scripted(lambda body: logprob_reply(None)),
                lambda llm: score_verdict(llm, MESSAGES, log=log),
            )
        )
    [call] = log.read()
    assert call["parsed"] is None and "no logprobs" in call["error"]


def test_a_model_that_would_say_neither_word_gives_no_score():
    top = [("I", -0.1), ("The", -1.0), ("Yes", -2.0)]
    with pytest.raises(ReplyError, match=r"neither 'pass' nor 'fail'.*it would say 'I'"):
        run(
            (
                scripted(lambda body: logprob_reply(top, "I")),
                lambda llm: score_verdict(llm, MESSAGES),
            )
        )


def test_auroc_and_its_interval_on_a_known_set():
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.5], [0.5]) == 0.5  # a tie counts half
    assert auroc([0.9, 0.1], [0.5, 0.5]) == 0.5
    q = quality([0.9, 0.8, 0.7, 0.6] * 5, [0.5, 0.4, 0.65, 0.3] * 5)
    assert q.auroc == pytest.approx(0.9375) and q.informative
    assert q.low < q.auroc < q.high
    assert "no information" not in q.describe()
    # the 0.5B reviewers as the issue measured them: P(pass) 0.93 to both kinds
    same = quality([0.93, 0.92, 0.94, 0.93], [0.93, 0.94, 0.92, 0.93])
    assert not same.informative and same.describe().endswith(
        "no information (the interval holds 0.5)"
    )
    # perfect on a few changes still has an interval
    few = quality([0.9, 0.8], [0.1])
    assert few.auroc == 1.0 and few.low < 1.0
    with pytest.raises(ValueError, match="both good and bad"):
        quality([0.9], [])


def test_the_threshold_lets_at_most_the_target_share_of_defects_through():
    good = [0.95, 0.9, 0.85, 0.8, 0.6]
    bad = [0.1, 0.2, 0.3, 0.7, 0.86]
    t = fit_threshold(good, bad, max_defects_through=0.2)
    assert t.value == 0.8 and t.defects_through == 0.2 and t.good_passed == 0.8
    strict = fit_threshold(good, bad, max_defects_through=0.0)
    assert strict.value == 0.9 and strict.defects_through == 0.0 and strict.good_passed == 0.4


def _review(tmp_path, top, reason="It returns 5 for (6, 0, 10) whatever the bounds.", backend=None):
    bodies = []

    def answer(body):
        bodies.append(body)
        if body.get("max_tokens") == 1:
            return logprob_reply(top)
        return httpx.Response(200, json={"choices": [{"index": 0, "message": {"content": reason}}]})

    node = tmp_path / "runs" / "codefix-000001" / "review_a"
    node.mkdir(parents=True)
    ws = SimpleNamespace(
        diff=lambda: "--- a/m.py\n+++ b/m.py\n@@\n-x\n+y\n", files=lambda: ["m.py"], path=tmp_path
    )
    agent = ReviewPeer()
    params = ReviewPeer.Params(scored=True, threshold=0.6)

    async def go(llm):
        ctx = NodeContext(
            "000001",
            1,
            "codefix",
            "review_a",
            node,
            params,
            llm=llm,
            calls=CallLog(node),
            workspace=ws,
        )
        return await agent.run(
            ReviewPeer.Input(task="fix clamp", kind="code", test_passed=True), ctx
        )

    llm, http = scripted(answer)
    if backend is not None:
        llm.backend = backend
    out = run(((llm, http), go))
    return out, bodies, CallLog(node).read()


def test_a_scored_review_passes_at_its_threshold_with_its_score_as_reason(tmp_path):
    out, bodies, calls = _review(tmp_path, [("pass", -0.1), ("fail", -2.5)])
    assert out.passed and out.score > 0.9
    assert out.reasons == [f"P(pass) {out.score:.2f}, threshold 0.60"]
    assert len(bodies) == 1, "a change that passes costs one token"
    assert bodies[0]["messages"][-1]["content"].endswith("Answer with one word: pass or fail.")
    assert [c["kind"] for c in calls] == ["score"]


def test_a_change_scored_low_fails_and_its_reason_is_asked_after_the_verdict(tmp_path):
    out, bodies, calls = _review(tmp_path, [("fail", -0.2), ("pass", -1.8)])
    assert not out.passed and out.score < 0.6
    assert out.reasons[0].startswith("It returns 5 for (6, 0, 10)")
    assert out.reasons[1].startswith("P(pass) 0.")
    why = bodies[1]["messages"]
    assert why[-2] == {"role": "assistant", "content": "fail"} and why[-1]["content"] == WHY_FAILS
    assert [c["kind"] for c in calls] == ["score", "reason"]


def test_a_scored_reviewer_on_a_server_without_logprobs_fails_with_why_never_a_guess(tmp_path):
    """A server that returns no logprobs gives no verdict: the review stops with the reason
    (the job fails and says so), and its call is recorded with that error, never a guessed
    pass. Pantheon's own servers return them on every backend."""
    from pantheon.core.model.client import Backend

    with pytest.raises(ModelServerError, match="returned no logprobs"):
        _review(tmp_path, None, reason="{}", backend=Backend.OPENVINO)
    [call] = CallLog(tmp_path / "runs" / "codefix-000001" / "review_a").read()
    assert call["kind"] == "score" and call["parsed"] is None
    assert "no logprobs" in call["error"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    ModelStore().pull(TEST_MODEL)
    srv = ModelServer(
        tmp_path_factory.mktemp("served"),
        ServerConfig(model=TEST_MODEL, port=0, parallel=2, ctx_per_slot=1024),
    )
    state = srv.start(timeout_s=120)
    yield state
    srv.stop()


def test_a_real_llama_server_streams_the_verdict_tokens_logprobs(served):
    """llama-server's streamed answer carries the first token's top logprobs, and the score
    is read from them: a number between 0 and 1, or the clear error of a model that would say
    neither word — never a guess."""

    async def go():
        async with LLMClient(served.endpoint, timeout_s=120) as llm:
            messages = [
                {"role": "system", "content": "You answer with exactly one word: pass or fail."},
                {"role": "user", "content": "2 + 2 = 4. Is that right? Answer pass or fail."},
            ]
            try:
                score = await score_verdict(llm, messages)
            except ReplyError as exc:
                return exc
            return score

    got = asyncio.run(go())
    if isinstance(got, ReplyError):
        assert "likeliest first tokens" in got.message
    else:
        assert 0.0 <= got.p_pass <= 1.0 and 0.0 < got.mass <= 1.0
        top = got.reply.raw["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        assert len(top) == TOP_LOGPROBS


def _labelled(n: int) -> list:
    from pantheon.core.work.labelled import Labelled

    changes = []
    for i in range(n):
        for kind, right in (("good", True), ("backdoor", False)):
            changes.append(
                Labelled(
                    flow="code",
                    id=f"p{i}/{kind}",
                    key=f"file:p{i}.py",
                    kind=kind,
                    right=right,
                    why="",
                    task=f"fix p{i}",
                    diff=f"--- a/p{i}.py\n+++ b/p{i}.py\n@@\n-x\n+{kind} {i}\n",
                    test_passed=True,
                    test_report=[],
                )
            )
    return changes


def _calibrate(tmp_path, p_of):
    from pantheon.core.run.calibrate import calibrate

    def answer(body):
        text = body["messages"][-1]["content"]
        p = p_of(text)
        return logprob_reply([("pass", math.log(p)), ("fail", math.log(1 - p))])

    return run(
        (
            scripted(answer),
            lambda llm: calibrate(llm, model="m", changes=_labelled(24), parallel=4),
        )
    )


def test_calibration_fits_on_one_half_and_measures_on_the_other(tmp_path):
    from pantheon.core.observe.quality import read_calibration, write_calibration

    # a reviewer that scores good changes 0.8-0.9 and backdoors 0.3-0.85: it knows something
    def p_of(text):
        i = int(text.split("fix p", 1)[1].split()[0].rstrip("\n"))
        return 0.8 + (i % 3) * 0.05 if "+good" in text else 0.3 + (i % 12) * 0.05

    found = _calibrate(tmp_path, p_of)
    assert [c.reviewer for c in found] == ["review_a", "review_b", "gate"]
    gate = found[-1]
    from pantheon.core.run.calibrate import tune_half

    held = sum(not tune_half(f"file:p{i}.py") for i in range(24))
    assert 0 < held < 24 and gate.kind == "code"
    assert gate.good == gate.bad == held, "measured on the problems the fit never saw"
    assert gate.informative and gate.auroc > 0.8
    assert gate.defects_caught >= 0.5 and 0.0 < gate.good_passed <= 1.0
    assert "at threshold" in gate.describe()
    write_calibration(tmp_path, found)
    assert read_calibration(tmp_path) == found
    # calibrating again replaces the same reviewers, and keeps others
    other = found[0].model_copy(update={"model": "other"})
    write_calibration(tmp_path, [other])
    assert len(read_calibration(tmp_path)) == 4


def test_a_reviewer_that_scores_everything_alike_is_shown_as_carrying_no_information(tmp_path):
    found = _calibrate(tmp_path, lambda text: 0.93)
    gate = found[-1]
    assert gate.auroc == 0.5 and not gate.informative
    assert gate.describe().endswith("no information (the interval holds 0.5)")


def test_a_corrupt_calibration_file_is_named(tmp_path):
    from pantheon.core.errors import ArtifactError
    from pantheon.core.observe.quality import calibration_path, read_calibration

    assert read_calibration(tmp_path) == []
    path = calibration_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('[{"reviewer": "review_a"')
    with pytest.raises(ArtifactError, match=r"calibration\.json is not a calibration file"):
        read_calibration(tmp_path)


def test_calibrating_an_adapter_uses_only_the_problems_and_pages_it_never_saw(tmp_path):
    """With the split keys a training held out, the labelled changes are those problems' and
    pages' only, so an adapter is never calibrated on what it trained on."""
    from pantheon.core.run.calibrate import labelled_changes
    from pantheon.core.run.demo import corpus_tasks
    from pantheon.core.work.labelled import one_per_problem

    task = one_per_problem(corpus_tasks())[5]
    pages = sorted(p.name for p in (Path(__file__).parents[1] / "flows/corpus/docs").glob("*.md"))
    keys = {f"file:{task['module']}.py", f"file:{pages[2]}", f"file:{pages[7]}"}
    got = labelled_changes(tmp_path, code=30, docs=20, keys=keys)
    assert {c.key for c in got} == keys
    assert {c.kind for c in got if c.flow == "code"} >= {"good", "backdoor"}
