"""Tokens per second of the embedded model through Pantheon's client, at concurrency 1, 4 and 8,
against llama.cpp's own llama-bench on the same file (and the server's own timings); or, with
``--backend openvino``, OpenVINO's server beside llama-server on the same GGUF file, in one run.

    python bench/serve.py                          # the default model
    python bench/serve.py --model smollm2-135m --tokens 64 --rounds 2
    python bench/serve.py --backend openvino       # qwen2.5-coder-1.5b on both backends

The ratio client/llama-bench at concurrency 1 is what the HTTP server, the client and the
chat template cost over raw decoding; the aggregate at 4 and 8 shows what continuous batching adds
on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from pantheon.core.model.client import LLMClient
from pantheon.core.model.files import ModelStore
from pantheon.core.model.server import (
    ModelServer,
    ServerConfig,
    find_llama_binary,
    llama_environment,
)

PROMPT = [{"role": "user", "content": "Write a long essay about lighthouses and their keepers."}]


def llama_bench(model: Path, tokens: int) -> float:
    binary = find_llama_binary("llama-bench")
    cmd = [str(binary), "-m", str(model), "-p", "0", "-n", str(tokens), "-r", "2", "-o", "json"]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=llama_environment(binary.parent), check=True
    )
    rows = json.loads(out.stdout)
    return float(rows[0]["avg_ts"])


async def run_level(client: LLMClient, concurrency: int, rounds: int, tokens: int):
    extra = {"ignore_eos": True}  # every request generates exactly `tokens`

    async def worker() -> list[tuple[int, float]]:
        got = []
        for _ in range(rounds):
            reply = await client.chat(PROMPT, max_tokens=tokens, extra=extra)
            server_tps = float((reply.raw.get("timings") or {}).get("predicted_per_second") or 0)
            got.append((reply.completion_tokens, server_tps))
        return got

    t0 = time.perf_counter()
    results = await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    flat = [r for w in results for r in w]
    total = sum(n for n, _ in flat)
    return total / wall, statistics.mean(t for _, t in flat), wall


async def serve_levels(args, backend: str, model: str) -> dict[int, float]:
    """Aggregate generated tokens/s of one backend's server at each concurrency level."""
    got: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = ModelServer(
            Path(tmp),
            ServerConfig(
                backend=backend,
                model=model,
                port=0,
                parallel=max(args.levels),
                ctx_per_slot=1024,
                threads=args.threads,
            ),
        )
        t0 = time.perf_counter()
        state = await asyncio.to_thread(server.start, timeout_s=300)
        print(f"{backend:<10} server up in {time.perf_counter() - t0:.1f} s")
        try:
            async with LLMClient(state.endpoint, model=state.alias, backend=backend) as client:
                await client.chat(PROMPT, max_tokens=8)  # warm up
                for c in args.levels:
                    agg, per_req, wall = await run_level(client, c, args.rounds, args.tokens)
                    got[c] = agg
                    timed = f", server-timed {per_req:5.1f} tok/s per request" if per_req else ""
                    print(
                        f"{backend:<10} concurrency {c:<2} {agg:6.1f} tok/s aggregate{timed}, "
                        f"{wall:.1f} s",
                        flush=True,
                    )
        finally:
            await asyncio.to_thread(server.stop)
    return got


async def main_async(args) -> None:
    model = args.model or (
        "qwen2.5-coder-1.5b" if args.backend == "openvino" else "qwen2.5-coder-0.5b"
    )
    model_path = ModelStore().pull(model)
    print(f"model                 {model} ({model_path.stat().st_size / 1e6:.0f} MB)")
    if args.backend == "llama.cpp":
        base = llama_bench(model_path, args.tokens)
        print(f"llama-bench tg{args.tokens}        {base:.1f} tok/s (raw decoding, one stream)")
        got = await serve_levels(args, "llama.cpp", model)
        for c, agg in got.items():
            print(f"concurrency {c:<2} {agg / base:.2f}x llama-bench")
        return
    # OpenVINO beside llama.cpp on the same file, in this run: the ratio is what matters
    llama = await serve_levels(args, "llama.cpp", model)
    openvino = await serve_levels(args, "openvino", model)
    print(f"\n{'concurrency':<12} {'llama.cpp':>10} {'openvino':>10} {'ratio':>7}")
    for c in args.levels:
        print(f"{c:<12} {llama[c]:>10.1f} {openvino[c]:>10.1f} {openvino[c] / llama[c]:>6.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--backend",
        choices=["llama.cpp", "openvino"],
        default="llama.cpp",
        help="openvino: OpenVINO's server beside llama-server on the same GGUF file",
    )
    ap.add_argument("--model", help="default: qwen2.5-coder-0.5b (1.5b for openvino)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="requests per worker")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--threads", type=int, help="CPU threads for each server")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
