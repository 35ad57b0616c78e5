"""What a LoRA adapter costs llama-server on this machine, in generated tokens/s at concurrency c:

- ``plain``       a server with no adapter loaded (the baseline, in the same run);
- ``loaded``      the adapter loaded, every request without it (scale 0: the base model answers);
- ``applied``     every request with it;
- ``mixed``       half the requests with it, half without, all in flight at once — how a judging
                  that asks both sides of each task together loads the server (llama-server does
                  not batch requests whose adapters differ);
- ``phased``      c requests without it, then c with it: one side at a time, each at full c
                  (what the judging does).

    python bench/lora_serve.py [--model qwen2.5-coder-0.5b] [--c 4] [--tokens 64] [--rounds 2]

Speculation is off on both servers. Needs the train extra (the adapter is a rank-8 peft LoRA
with random weights, written as GGUF).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import warnings
from pathlib import Path

from pantheon.core.model.client import LLMClient
from pantheon.core.model.files import ModelStore
from pantheon.core.model.server import ModelServer, ServerConfig, artifact_name

PROMPT = [
    {
        "role": "user",
        "content": "Write a Python function that parses an ISO 8601 date and explain each step.",
    }
]


def random_adapter(model_path: Path, out: Path) -> Path:
    """A rank-8 LoRA on q/k/v/o with random A and B (so applying it costs what a trained one
    does), as a GGUF LoRA file."""
    import torch
    from peft import LoraConfig, get_peft_model

    from pantheon.trainer.gguf_lora import peft_to_gguf
    from pantheon.trainer.steps import load_base

    torch.manual_seed(0)
    _, base = load_base(model_path, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(
            base,
            LoraConfig(
                r=8,
                lora_alpha=16,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                init_lora_weights=False,
            ),
        )
    folder = out.parent / "peft"
    model.save_pretrained(folder, save_embedding_layers=False)
    peft_to_gguf(folder, model_path, out)
    return out


async def load(client: LLMClient, sides: list[str | None], tokens: int) -> tuple[float, float]:
    """Generated tokens/s of ``sides`` (an adapter name or None each) all in flight at once,
    and the wall time."""
    extra = {"ignore_eos": True}  # every request generates exactly `tokens`

    async def one(adapter: str | None) -> int:
        reply = await client.chat(PROMPT, max_tokens=tokens, extra=extra, adapter=adapter)
        return reply.completion_tokens

    t0 = time.perf_counter()
    got = await asyncio.gather(*(one(a) for a in sides))
    wall = time.perf_counter() - t0
    return sum(got) / wall, wall


async def measure(root: Path, model: str, adapter: Path | None, args) -> dict[str, float]:
    server = ModelServer(
        root,
        ServerConfig(
            model=model,
            port=0,
            parallel=args.c,
            ctx_per_slot=1024,
            speculative="none",  # drafts would make the figures depend on what is generated
            adapters=[str(adapter)] if adapter else [],
        ),
    )
    state = await asyncio.to_thread(server.start, timeout_s=300)
    out: dict[str, float] = {}
    try:
        async with LLMClient(state.endpoint, model=state.alias, adapters=state.adapters) as client:
            await client.chat(PROMPT, max_tokens=8)  # warm up
            name = artifact_name(adapter) if adapter else None
            cases = (
                {"plain": [[None] * args.c]}
                if adapter is None
                else {
                    "loaded": [[None] * args.c],
                    "applied": [[name] * args.c],
                    "mixed": [[None, name] * (args.c // 2)],
                    "phased": [[None] * args.c, [name] * args.c],
                }
            )
            for case, phases in cases.items():
                total_tokens, total_wall = 0.0, 0.0
                for _ in range(args.rounds):
                    for sides in phases:
                        tps, wall = await load(client, sides, args.tokens)
                        total_tokens += tps * wall
                        total_wall += wall
                out[case] = total_tokens / total_wall
                print(f"{case:<8} c={args.c}  {out[case]:6.1f} tok/s", flush=True)
    finally:
        await asyncio.to_thread(server.stop)
    return out


async def main_async(args) -> None:
    path = ModelStore().pull(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        gguf = random_adapter(path, Path(tmp) / "adapter" / "bench-lora.gguf")
        print(f"adapter  rank 8 q/k/v/o, written in {time.perf_counter() - t0:.0f} s")
        got = await measure(Path(tmp) / "plain", args.model, None, args)
        got |= await measure(Path(tmp) / "lora", args.model, gguf, args)
    base = got["plain"]
    print(f"\nmodel {args.model}, c={args.c}, {args.tokens} tokens a request, {args.rounds} rounds")
    for case, tps in got.items():
        print(f"{case:<8} {tps:6.1f} tok/s  {tps / base:5.2f}x plain")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--c", type=int, default=4, help="requests in flight (even)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.c < 2 or args.c % 2:
        ap.error("--c must be even and at least 2")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
