"""The learn loop's costs on this machine: loading the served GGUF weights, a LoRA training step
against a forward pass of the same batch (the baseline, in the same process), and writing the
adapter as a GGUF LoRA.

    python bench/learn.py [--model smollm2-135m] [--steps 12] [--batch 4]

Needs the train extra (pip install '.[train]'). The data are chat examples shaped like the
doc.frontmatter agent's (a system prompt, a document, a JSON reply), about 250 tokens each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from pantheon.core.agents.describe import DocDescribe
from pantheon.core.model.files import ModelStore
from pantheon.core.run.demo import demo_inputs


def examples(n: int) -> list[list[dict[str, str]]]:
    docs = demo_inputs()
    out = []
    for i in range(n):
        text = docs[i % len(docs)]["text"]
        reply = {
            "title": text.splitlines()[0].lstrip("# ")[:60] or "A page",
            "description": "What the reader learns from this page of the store's manual.",
            "tags": ["store", "docs"],
        }
        out.append(
            [
                {"role": "system", "content": DocDescribe.SYSTEM},
                {"role": "user", "content": text[:1500]},
                {"role": "assistant", "content": json.dumps(reply, indent=2)},
            ]
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    from pantheon.trainer.gguf_lora import peft_to_gguf
    from pantheon.trainer.steps import encode, load_base, make_batch

    path = ModelStore().pull(args.model)
    t0 = time.perf_counter()
    tok, base = load_base(path, False)
    load_s = time.perf_counter() - t0
    items = [encode(tok, m, 1024) for m in examples(args.steps * args.batch)]
    batches = [
        make_batch(items[i : i + args.batch], tok.pad_token_id, "cpu")
        for i in range(0, len(items), args.batch)
    ]
    tokens = [int(b["attention_mask"].sum()) for b in batches]

    base.eval()
    forward = []
    with torch.no_grad():
        for b in batches:
            t = time.perf_counter()
            base(**b)
            forward.append(time.perf_counter() - t)

    with warnings.catch_warnings():  # peft's use of a renamed transformers call
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(
            base,
            LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    sched = get_cosine_schedule_with_warmup(opt, 1, len(batches))
    steps, losses = [], []
    for b in batches:
        t = time.perf_counter()
        loss = model(**b).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        steps.append(time.perf_counter() - t)
        losses.append(float(loss.detach()))

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        model.save_pretrained(Path(tmp) / "adapter", save_embedding_layers=False)
        n = peft_to_gguf(Path(tmp) / "adapter", path, Path(tmp) / "a.gguf")
        convert_s = time.perf_counter() - t
        size = (Path(tmp) / "a.gguf").stat().st_size

    fwd, stp = statistics.median(forward[1:]), statistics.median(steps[1:])
    tok_per_step = statistics.mean(tokens)
    trainable = sum(p.numel() for p in params)
    print(f"model            {args.model} ({path.name})")
    print(f"load (GGUF → f32) {load_s:.1f} s")
    print(f"batch            {args.batch} examples, {tok_per_step:.0f} tokens")
    print(f"forward pass     {fwd:.2f} s (median of {len(forward) - 1})")
    print(f"LoRA train step  {stp:.2f} s = {stp / fwd:.1f}× a forward pass")
    print(f"train throughput {tok_per_step / stp:.0f} tokens/s")
    print(f"trainable        {trainable:,} parameters (rank 8, q/k/v/o)")
    print(f"loss             {losses[0]:.3f} → {losses[-1]:.3f} over {len(losses)} steps")
    print(f"adapter → GGUF   {convert_s:.2f} s, {n} tensors, {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
