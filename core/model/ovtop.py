"""Log probabilities from the OpenVINO server: the likeliest first tokens of a one-token reply.

OpenVINO GenAI's pipeline gives no logits, only each generated sequence's log probability. A
beam search of one step with ``k`` beams returns the ``k`` likeliest first tokens, each with its
own log probability under the model — what OpenAI's ``top_logprobs`` says about the first token.
So the server answers ``logprobs`` for a one-token reply (``max_tokens`` 1, one choice), which is
what a scored verdict asks (:mod:`pantheon.core.model.scoring`); a longer reply asking for them
is refused with the reason, never answered without them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from pantheon.core.model.ovpipe import Choices

__all__ = ["MAX_TOP_LOGPROBS", "logprobs_problem", "one_token_body", "one_token_events"]

MAX_TOP_LOGPROBS = 20
"""OpenAI's own limit on ``top_logprobs``."""


def logprobs_problem(max_tokens: int | None, n: int) -> str | None:
    """Why a request that asks for logprobs cannot have them here (None: it can)."""
    if max_tokens != 1 or n != 1:
        return (
            "this server returns logprobs for a one-token reply only (max_tokens 1, n 1): "
            "OpenVINO GenAI gives no logits, so the likeliest first tokens come from one step "
            "of a beam search"
        )
    return None


def _choice(texts: dict[int, str], finish: dict[int, str], scores: dict[int, float]):
    """The likeliest token as the reply, and every beam's token as its ``top_logprobs``."""
    ranked = sorted(scores, key=lambda i: (-scores[i], i))
    top = [{"token": texts.get(i, ""), "logprob": scores[i]} for i in ranked]
    for entry in top:
        entry["bytes"] = list(entry["token"].encode("utf-8"))
    best = ranked[0]
    content = {**top[0], "top_logprobs": top}
    return texts.get(best, ""), finish.get(best, "length"), {"content": [content]}


def one_token_body(
    gen: Choices, texts: dict[int, str], finish: dict[int, str], head: dict[str, Any]
) -> dict[str, Any]:
    """The chat completion of a one-token request, its logprobs read from its beams."""
    scores = {i: s for part in gen.parts for i, s in part.scores.items()}
    text, reason, logprobs = _choice(texts, finish, scores)
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": reason, "logprobs": logprobs}
    return {
        **head,
        "object": "chat.completion",
        "choices": [choice],
        "usage": {
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": 1,
            "total_tokens": gen.prompt_tokens + 1,
        },
    }


async def one_token_events(body: dict[str, Any], usage: bool) -> AsyncIterator[str]:
    """The same reply as server-sent events: the role, the token with its logprobs, the
    finish, the usage when asked, as llama-server streams them."""
    head = {k: body[k] for k in ("id", "created", "model")}
    choice = body["choices"][0]

    def chunk(choices: list[dict[str, Any]], **more: Any) -> str:
        data = {**head, "object": "chat.completion.chunk", "choices": choices, **more}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    yield chunk([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])
    token = {"content": choice["message"]["content"]}
    said = {"index": 0, "delta": token, "logprobs": choice["logprobs"], "finish_reason": None}
    yield chunk([said])
    yield chunk([{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}])
    if usage:
        yield chunk([], usage=body["usage"])
    yield "data: [DONE]\n\n"
