"""The safe model call: exactly one JSON object, validated, or a clear recorded error."""

from __future__ import annotations

import httpx
import pytest
from helpers import scripted_model
from pydantic import BaseModel

from pantheon.core import ModelServerError, ReplyError
from pantheon.core.model.client import LLMClient
from pantheon.core.model.safecall import CallLog, call_model, extract_json_object, parse_reply


class Verdict(BaseModel):
    passed: bool
    reasons: list[str]


def test_plain_json():
    assert extract_json_object('{"passed": true, "reasons": []}') == {"passed": True, "reasons": []}


def test_fenced_json_with_prose_around():
    text = (
        'Sure! Here it is:\n```json\n{"passed": false, "reasons": ["x {y}"]}\n```\nHope it helps.'
    )
    assert parse_reply(text, Verdict) == Verdict(passed=False, reasons=["x {y}"])


def test_prose_around_a_bare_object():
    text = 'I think {this is prose} and the answer is {"passed": true, "reasons": ["ok"]} done'
    assert parse_reply(text, Verdict).passed is True


def test_two_objects_are_refused():
    with pytest.raises(ReplyError, match="2 JSON objects; exactly one was expected"):
        extract_json_object('{"a": 1}\n{"a": 2}')


def test_truncated_json_is_refused_never_guessed():
    # the inner object is valid JSON, but it is part of a reply cut short: never take it
    with pytest.raises(ReplyError, match="cut short"):
        extract_json_object('{"passed": true, "detail": {"k": 1}, "reasons": ["a", "b')


def test_html_error_page():
    page = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body></body></html>"
    with pytest.raises(ReplyError, match=r"HTML page \(502 Bad Gateway\)"):
        extract_json_object(page)


@pytest.mark.parametrize("text", ["", "   \n", "no json here at all"])
def test_empty_or_jsonless_replies(text):
    with pytest.raises(ReplyError, match=r"empty|no JSON object"):
        extract_json_object(text)


def test_arrays_and_python_literals_are_not_json_objects():
    with pytest.raises(ReplyError, match="array"):
        extract_json_object('[{"passed": true, "reasons": []}]')
    with pytest.raises(ReplyError, match="no valid JSON object"):
        extract_json_object("{'passed': True, 'reasons': []}")


def test_an_object_that_does_not_fit_the_schema():
    with pytest.raises(ReplyError, match=r"does not fit Verdict: passed: Input should be"):
        parse_reply('{"passed": "maybe", "reasons": []}', Verdict)
    with pytest.raises(ReplyError, match="reasons: Field required"):
        parse_reply('{"passed": true}', Verdict)


def _client(replies):
    """A client over MockTransport answering each request with the next reply text."""
    seen = []

    def answer(body):
        seen.append(body)
        return replies.pop(0)

    client, http = scripted_model(
        answer, usage={"prompt_tokens": 11, "completion_tokens": 7}, finish_reason="stop", model="m"
    )
    return client, seen, http


async def test_call_model_records_every_call(tmp_path):
    client, seen, http = _client(['```json\n{"passed": true, "reasons": ["fine"]}\n```', "nope"])
    log = CallLog(tmp_path / "node")
    msgs = [{"role": "user", "content": "review"}]
    value, reply = await call_model(client, msgs, Verdict, log=log, step=1)
    assert value == Verdict(passed=True, reasons=["fine"])
    assert reply.prompt_tokens == 11 and reply.completion_tokens == 7
    assert seen[0]["response_format"]["json_schema"]["schema"]["title"] == "Verdict"
    assert seen[0]["temperature"] == 0.0 and seen[0]["seed"] == 0
    with pytest.raises(ReplyError):
        await call_model(client, msgs, Verdict, log=log, step=2)
    await http.aclose()
    calls = log.read()
    assert [c["step"] for c in calls] == [1, 2]
    good, bad = calls
    assert good["parsed"] == {"passed": True, "reasons": ["fine"]} and good["error"] is None
    assert good["messages"] == msgs and good["model"] == "m" and good["latency_s"] >= 0
    assert good["prompt_tokens"] == 11 and good["completion_tokens"] == 7
    assert bad["raw"] == "nope" and bad["parsed"] is None and "no JSON object" in bad["error"]


async def test_a_dead_server_is_recorded_too(tmp_path):
    def handler(request):
        raise httpx.ConnectError("connection refused")

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = LLMClient("http://127.0.0.1:9", http=http, retries=0)
    log = CallLog(tmp_path)
    with pytest.raises(ModelServerError, match="not answering"):
        await call_model(client, [{"role": "user", "content": "x"}], Verdict, log=log)
    await http.aclose()
    [call] = log.read()
    assert "not answering" in call["error"] and call["raw"] is None


def _sampling_client(greedy, samples):
    """Greedy requests get ``greedy`` in turn; a request for n choices gets ``samples``."""
    seen = []

    def answer(body):
        seen.append(body)
        return samples[: body["n"]] if body.get("n") else [greedy.pop(0)]

    client, http = scripted_model(
        answer,
        usage={"prompt_tokens": 11, "completion_tokens": 7},
        finish_reason="stop",
        model="m",
        tokens=lambda content: [1, 2, 3],
    )
    return client, seen, http


def _short(v):
    return [] if len(v.reasons) == 1 else [f"give one reason, not {len(v.reasons)}"]


async def test_sampled_replies_are_asked_for_at_once_when_the_greedy_one_breaks_a_check(tmp_path):
    from pantheon.core.model.safecall import ask_sampled

    two = '{"passed": true, "reasons": ["a", "b"]}'
    client, seen, http = _sampling_client(
        [two, two],
        [
            "garbage",
            two,
            '{"passed": false, "reasons": ["c"]}',
            '{"passed": true, "reasons": ["d"]}',
        ],
    )
    log = CallLog(tmp_path)
    msgs = [{"role": "user", "content": "review"}]
    got = await ask_sampled(client, msgs, Verdict, k=4, log=log, check=_short)
    await http.aclose()
    assert got == Verdict(passed=False, reasons=["c"]), "the first sample that passes the check"
    assert len(seen) == 3 and seen[2]["n"] == 4 and seen[2]["temperature"] == 0.7
    assert seen[2]["response_format"]["json_schema"]["schema"]["title"] == "Verdict"
    calls = log.read()
    assert [c["step"] for c in calls] == [1, 2, "sample 1", "sample 2", "sample 3", "sample 4"]
    errors = [c["error"] for c in calls]
    assert "give one reason, not 2" in errors[3] and errors[4] is None
    assert errors[5] == "not needed", "a later fitting sample is recorded, never mined as kept"


async def test_when_no_sample_fits_the_first_error_stands_with_the_samples_reason(tmp_path):
    from pantheon.core.model.safecall import ask_sampled

    two = '{"passed": true, "reasons": ["a", "b"]}'
    client, _, http = _sampling_client([two, two], [two, two])
    with pytest.raises(ReplyError, match="none of 2 sampled replies fits either"):
        await ask_sampled(client, [{"role": "user", "content": "x"}], Verdict, k=2, check=_short)
    await http.aclose()
