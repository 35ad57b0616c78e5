"""A verdict as a probability: the model's own weight on "pass" against "fail" for the one
token of its answer, read from the server's logprobs — not a word sampled from it.

The prompt asks for one word; the request asks for that one token, greedy, with the server's
``top_logprobs`` most likely first tokens. P(pass) is the probability mass of the tokens that
spell "pass" (any case, any leading space) over that of "pass" and "fail" together. A server that
returns no logprobs is a :class:`~pantheon.core.errors.ModelServerError`, and a model whose
likeliest first tokens hold neither word a :class:`~pantheon.core.errors.ReplyError`: a score is
never guessed.

llama-server and vLLM return logprobs for OpenAI's ``logprobs``/``top_logprobs``; so does
Pantheon's OpenVINO server, for the one-token reply asked here (:mod:`.ovtop`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from pantheon.core.errors import ModelServerError, ReplyError
from pantheon.core.model.client import ChatReply, LLMClient, Message
from pantheon.core.model.safecall import CallLog, stall_fields

__all__ = [
    "TOP_LOGPROBS",
    "VERDICT_WORDS",
    "Score",
    "is_verdict",
    "score_reply",
    "score_verdict",
    "verdict_word",
]

TOP_LOGPROBS = 20
"""How many likeliest first tokens the server is asked for."""

VERDICT_WORDS = ("pass", "fail")
"""The two words a scored verdict is one of: the first counts for the change, the second against."""


@dataclass(frozen=True, slots=True)
class Score:
    """One scored verdict."""

    p_pass: float
    """P(pass) / (P(pass) + P(fail)), over the first token of the answer."""
    mass: float
    """How much of the model's probability the two words hold together (0 to 1): low means the
    model wanted to say something else, and the score says less."""
    said: str
    """The token the model would have said (its likeliest)."""
    reply: ChatReply


def verdict_word(passed: bool) -> str:
    """The one word a scored verdict is: what a verifier learns to say."""
    return VERDICT_WORDS[0] if passed else VERDICT_WORDS[1]


def is_verdict(reply: str) -> bool:
    """Whether a reply is a scored verdict's one word (a verifier's example)."""
    return reply.strip().lower() in VERDICT_WORDS


def _word(token: str) -> str | None:
    text = token.strip().lower()
    for word in VERDICT_WORDS:
        if text and ((word.startswith(text) and len(text) >= 3) or text.startswith(word)):
            return word
    return None


def score_reply(reply: ChatReply, *, where: str = "the model server") -> Score:
    """The score in one reply's first-token logprobs; ReplyError when there is none to read."""
    try:
        first = reply.raw["choices"][0]["logprobs"]["content"][0]
        top: list[dict[str, Any]] = first.get("top_logprobs") or []
    except (KeyError, IndexError, TypeError):
        raise ModelServerError(
            f"{where} returned no logprobs, so the verdict cannot be scored",
            hint="llama-server, vLLM and Pantheon's OpenVINO server return them; "
            "a reasoned review (scored: false) needs none",
        ) from None
    mass = {word: 0.0 for word in VERDICT_WORDS}
    for entry in top:
        word = _word(str(entry.get("token", "")))
        logprob = entry.get("logprob")
        if word is not None and isinstance(logprob, int | float) and math.isfinite(logprob):
            mass[word] += math.exp(logprob)
    total = sum(mass.values())
    said = str((top[0] if top else first).get("token", ""))
    if total <= 0.0:
        raise ReplyError(
            f"neither {VERDICT_WORDS[0]!r} nor {VERDICT_WORDS[1]!r} is among the model's "
            f"{len(top)} likeliest first tokens (it would say {said!r}): no score",
            hint="the reviewer's prompt must end by asking for one word, pass or fail",
        )
    return Score(
        p_pass=mass[VERDICT_WORDS[0]] / total, mass=min(1.0, total), said=said, reply=reply
    )


async def score_verdict(
    llm: LLMClient,
    messages: list[Message],
    *,
    adapter: str | None = None,
    log: CallLog | None = None,
) -> Score:
    """Ask for the one verdict token and score it (see the module's docstring); the call is a
    line of ``log`` with its score, or with why there is none."""
    base: dict[str, Any] = {
        "kind": "score",
        "backend": str(llm.backend),
        "endpoint": llm.where,
        "adapter": adapter,
        "messages": messages,
    }
    t0 = time.perf_counter()
    reply: ChatReply | None = None
    try:
        reply = await llm.chat(
            messages,
            temperature=0.0,
            max_tokens=1,
            adapter=adapter,
            label=log.label if log is not None else "verdict",
            extra={"logprobs": True, "top_logprobs": TOP_LOGPROBS},
        )
        score = score_reply(reply, where=f"the model server at {llm.where}")
    except (ModelServerError, ReplyError) as exc:
        if log is not None:
            got = {"raw": None}
            if reply is not None:  # it answered, but the answer holds no score
                got = {
                    "model": reply.model,
                    "raw": reply.text,
                    "prompt_tokens": reply.prompt_tokens,
                    "cached_tokens": reply.cached_tokens,
                    "completion_tokens": reply.completion_tokens,
                }
            log.record(
                **base,
                **got,
                parsed=None,
                error=exc.message,
                latency_s=round(time.perf_counter() - t0, 4),
                **stall_fields(exc),
            )
        raise
    if log is not None:
        log.record(
            **{**base, "endpoint": reply.endpoint or llm.where},
            model=reply.model,
            raw=reply.text,
            parsed={"p_pass": round(score.p_pass, 6), "mass": round(score.mass, 6)},
            error=None,
            prompt_tokens=reply.prompt_tokens,
            cached_tokens=reply.cached_tokens,
            completion_tokens=reply.completion_tokens,
            latency_s=round(reply.latency_s, 4),
        )
    return score
