"""A code writer's training step three ways, each in a process of its own: the model's own loss
(logits at every position, the baseline), the loss with the output head applied only where a
token is learnt from (what training does), and that with gradient checkpointing. Prints the
seconds a step, the peak memory, the memory the step added to the loaded model against the
estimate that decides checkpointing, the first step's loss (the same three times: the losses
are one loss), and what the process holds once the training is freed, before and after its
heap is given back to the system.

    python bench/train_memory.py [--model qwen2.5-coder-0.5b] [--batch 2] [--tokens 1536]
                                 [--steps 3]

Needs the train extra (pip install '.[train]'). The examples are shaped like the corpus's
real fixes: the prompt codegen sees (the task, the file, its failing tests' output), the
whole fixed file as the reply, learnt from on its changed lines; each is filled to --tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

MODES = ("model loss", "reply loss", "reply loss + checkpointing")


def examples(n: int, tokens: int) -> list[list[dict[str, str]]]:
    from pantheon.core.run.demo import corpus_tasks
    from pantheon.core.work.codefix import FixForm, fix_prompt
    from pantheon.core.work.labelled import fixed_source

    out = []
    for t in corpus_tasks()[:n]:
        failure = "E       AssertionError: assert candidate(3) == 5\n" * (tokens // 12)
        messages = fix_prompt(
            FixForm.WHOLE_FILE,
            task=t["task"],
            path=f"code/{t['id']}/{t['module']}.py",
            source=t["source"],
            failure=failure,
            test_path=f"code/{t['id']}/test_{t['module']}.py",
        )
        reply = f"```python\n{fixed_source(t).rstrip()}\n```"
        out.append([*messages, {"role": "assistant", "content": reply}])
    return out


def rss_mb() -> float:
    from pantheon.trainer.steps import proc_kib

    return (proc_kib("/proc/self/status", "VmRSS") or 0) / 1024


def child(args: argparse.Namespace) -> None:
    import torch

    from pantheon.core.model.files import ModelStore
    from pantheon.trainer.memory import give_back_memory, peak_memory, reset_peak_memory
    from pantheon.trainer.options import TrainOptions
    from pantheon.trainer.steps import (
        enable_checkpointing,
        encode,
        load_base,
        make_batch,
        new_line_spans,
        reply_loss,
        step_activations,
        with_lora,
    )

    torch.manual_seed(0)
    reset_peak_memory()
    tok, base = load_base(ModelStore().verified_path(args.model), False)
    loaded = rss_mb()
    if "checkpointing" in args.child:
        enable_checkpointing(base)
    model = with_lora(base, TrainOptions(dropout=0.0))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = examples(args.steps * args.batch, args.tokens)
    items = [encode(tok, m, args.tokens, new_line_spans(m)) for m in data]
    times, first = [], None
    for i in range(args.steps):
        batch = make_batch(items[i * args.batch : (i + 1) * args.batch], tok.pad_token_id, "cpu")
        t = time.perf_counter()
        loss = model(**batch).loss if args.child == "model loss" else reply_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
        first = float(loss) if first is None else first
    peak, _ = peak_memory("cpu")
    width = max(len(items[i][0]) for i in range(args.batch))
    estimate = step_activations(base.config, args.batch, width)
    del model, base, opt, batch, loss
    gc.collect()
    freed = rss_mb()
    give_back_memory()
    returned = rss_mb()
    print(
        json.dumps(
            {
                "mode": args.child,
                "step_s": statistics.median(times[1:] or times),
                "peak_mb": peak,
                "added_mb": peak - loaded,
                "estimate_mb": (estimate or 0) / 2**20,
                "kept_mb": freed,
                "returned_mb": returned,
                "first_loss": first,
                "tokens": width,
            }
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1536)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    rows = []
    for mode in MODES:
        argv = [sys.argv[0], "--model", args.model, "--batch", str(args.batch)]
        argv += ["--tokens", str(args.tokens), "--steps", str(args.steps), "--child", mode]
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{mode}: failed ({done.returncode})\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(
        f"{args.model}, batch {args.batch} of {base['tokens']} tokens, median of {args.steps} steps"
    )
    print(f"{'':28} {'s/step':>7} {'peak GB':>8} {'step GB':>8} {'est. GB':>8} {'loss':>8}")
    for r in rows:
        print(
            f"{r['mode']:28} {r['step_s']:7.1f} {r['peak_mb'] / 1024:8.1f} "
            f"{r['added_mb'] / 1024:8.1f} {r['estimate_mb'] / 1024:8.1f} {r['first_loss']:8.4f}"
        )
    for r in rows:
        print(
            f"{r['mode']}: done, the process holds {r['kept_mb'] / 1024:.1f} GB; "
            f"{r['returned_mb'] / 1024:.1f} GB once the freed heap is given back"
        )
    for r in rows[1:]:
        print(
            f"{r['mode']}: {r['step_s'] / base['step_s']:.2f}x the time, "
            f"{r['peak_mb'] / base['peak_mb']:.2f}x the peak memory of the model loss"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
