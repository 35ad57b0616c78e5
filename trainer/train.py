"""LoRA training of one agent's adapter, on the weights of the model the server runs.

transformers reads the served GGUF file itself and dequantizes it, so the adapter is trained on
the very weights it will be applied to. On a CUDA host with bitsandbytes the base is loaded in
4-bit NF4 (QLoRA); on CPU it trains in float32. The loss counts only the agent's reply: the
prompt's tokens are masked.

A training lives in ``training/<id>/``: ``state.json`` (status, step, result), one line of
``progress.jsonl`` per optimizer step, a checkpoint every few steps (adapter, optimizer and
scheduler state), then the peft adapter and its GGUF conversion. Interrupting it (Ctrl-C, SIGTERM)
finishes the step, saves a checkpoint and leaves it ``interrupted``: ``resume`` goes on from
there, ``abandon`` gives it up. A crash leaves the registry untouched; nothing is promoted here.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import random
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pantheon.core.errors import PantheonError
from pantheon.core.learn.files import (
    ProgressRow,
    TrainingState,
    read_state,
    training_id,
    training_root,
)
from pantheon.core.model.scoring import is_verdict
from pantheon.core.store.atomic import append_line, atomic_write_json

from .examples import DATA, STATS, TASKS, read_examples
from .gguf_lora import peft_to_gguf
from .memory import give_back_memory, peak_memory, reset_peak_memory
from .options import NotEnoughData, TrainingError, TrainingInterrupted, TrainOptions
from .steps import (
    Best,
    Horizon,
    Item,
    balance_labels,
    check_loss,
    checkpointing_wanted,
    enable_checkpointing,
    encode,
    first_token_only,
    heldout_loss,
    learnt,
    load_base,
    make_batch,
    new_line_spans,
    qlora_wanted,
    reply_loss,
    require_libraries,
    save_checkpoint,
    with_lora,
)

__all__ = [
    "NotEnoughData",
    "TrainOptions",
    "TrainingError",
    "TrainingInterrupted",
    "abandon",
    "check_data",
    "check_loss",
    "is_code_writer",
    "require_libraries",
    "start",
    "train",
]

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _save_state(folder: Path, state: TrainingState) -> None:
    atomic_write_json(folder / "state.json", state.model_dump(mode="json"))


def check_data(artifacts: Path, agent: str, options: TrainOptions) -> tuple[int, int]:
    """(training, held-out) examples of the agent; ``NotEnoughData`` with the counts when too
    few green examples were mined to train on."""
    options.check()
    examples, bad = read_examples(artifacts, agent)
    n_train = sum(1 for e in examples if e["split"] == "train")
    labels = {bool(e["label"]) for e in examples if e["split"] == "train" and "label" in e}
    if len(labels) == 1:
        only = "pass" if True in labels else "fail"
        raise NotEnoughData(
            f"every labelled example of {agent} says {only} ({n_train} of them): an adapter "
            f"trained on them would learn to say {only} every time",
            hint="the canaries label fails; the morning review's merged changes label passes "
            "(pantheon review)",
        )
    if n_train < options.min_examples:
        raise NotEnoughData(
            f"not enough data for {agent} ({n_train} < {options.min_examples} green examples"
            + (f"; {bad} corrupt line(s) skipped" if bad else "")
            + ")",
            hint="run more nights and mine again, or lower --min-examples (a small data set "
            "makes an adapter that rarely helps)",
        )
    return n_train, len(examples) - n_train


def start(
    artifacts: Path,
    agent: str,
    model_path: Path,
    options: TrainOptions | None = None,
    *,
    promote: bool = False,
) -> Path:
    """Check the agent's data and make its training folder; returns the folder. Raises
    ``NotEnoughData`` with the counts when the agent has too few training examples."""
    options = options or TrainOptions()
    if options.focus is None:
        options = options.model_copy(update={"focus": default_focus(artifacts, agent)})
    n_train, n_heldout = check_data(artifacts, agent, options)
    tid = training_id(agent)
    folder = training_root(artifacts) / tid
    n = 0
    while folder.exists():  # two trainings started within one second
        n += 1
        folder = training_root(artifacts) / f"{tid}-{n}"
    folder.mkdir(parents=True)
    # the data it trains and is judged on, as mined now: mining again never mixes the two
    mined = training_root(artifacts) / agent
    for name in (DATA, TASKS, STATS):
        if (mined / name).exists():
            shutil.copyfile(mined / name, folder / name)
    state = TrainingState(
        id=folder.name,
        agent=agent,
        status="running",
        base_model=str(model_path),
        options=options.model_dump(mode="json"),
        pid=os.getpid(),
        examples=n_train,
        heldout=n_heldout,
        started_at=_now(),
        promote=promote,
    )
    _save_state(folder, state)
    return folder


def default_focus(artifacts: Path, agent: str) -> str:
    """New lines for a code writer; the verdict token for a verifier (every reply one word,
    pass or fail: a scored reviewer's examples); else the whole reply."""
    if is_code_writer(agent):
        return "new-lines"
    try:
        examples, _ = read_examples(artifacts, agent, None)
    except PantheonError:
        return "reply"
    replies = [e["messages"][-1]["content"] for e in examples if e["split"] == "train"]
    return "verdict" if replies and all(is_verdict(r) for r in replies) else "reply"


def is_code_writer(agent: str) -> bool:
    """Whether the agent is judged by pass@1 (writes code) in the built-in registry."""
    from pantheon.core.agents.builtin import default_registry

    try:
        return getattr(default_registry().get(agent), "judged_by", "flow") == "pass@1"
    except PantheonError:
        return False


def abandon(folder: Path) -> TrainingState:
    """Give a stopped training up: its checkpoint is removed, its record kept."""
    state = read_state(folder)
    if state.alive:
        raise TrainingError(
            f"training {state.id} is still running (pid {state.pid})",
            hint="stop it first (Ctrl-C in its terminal, or kill -TERM the pid)",
        )
    if state.status == "done":
        raise TrainingError(f"training {state.id} finished; there is nothing to abandon")
    shutil.rmtree(folder / "checkpoint", ignore_errors=True)
    state.status = "abandoned"
    state.finished_at = _now()
    _save_state(folder, state)
    return state


def train(
    artifacts: Path,
    folder: Path,
    *,
    on_step: Callable[[ProgressRow], None] | None = None,
    stop: threading.Event | None = None,
) -> TrainingState:
    """Run (or resume) the training in ``folder`` to its end.

    ``stop`` set: finish the current step, save a checkpoint, and raise TrainingInterrupted.
    Any other failure is recorded in ``state.json`` as ``failed`` (with its checkpoint kept) and
    raised.
    """
    folder = Path(folder)
    state = read_state(folder)
    if state.status in ("done", "abandoned"):
        raise TrainingError(f"training {state.id} is {state.status}; start a new one")
    if state.gguf:
        raise TrainingError(
            f"training {state.id} has trained its adapter already",
            hint=f"judge it with: pantheon promote {state.id}",
        )
    if state.alive and state.pid != os.getpid():
        raise TrainingError(f"training {state.id} is already running (pid {state.pid})")
    state.status, state.pid, state.error = "running", os.getpid(), None
    _save_state(folder, state)
    try:
        return _train(artifacts, folder, state, on_step, stop or threading.Event())
    except TrainingInterrupted:
        state.status = "interrupted"
        _save_state(folder, state)
        raise
    except KeyboardInterrupt:  # stopped at once: it resumes from its last checkpoint
        state.status = "interrupted"
        state.error = f"stopped at once at step {state.step}; it resumes from its last checkpoint"
        _save_state(folder, state)
        raise
    except BaseException as exc:
        state.status = "failed"
        state.error = (
            str(exc)
            if isinstance(exc, PantheonError)
            else f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=6)}"
        )
        state.finished_at = _now()
        _save_state(folder, state)
        raise


def _train(
    artifacts: Path,
    folder: Path,
    state: TrainingState,
    on_step: Callable[[ProgressRow], None] | None,
    stop: threading.Event,
) -> TrainingState:
    options = TrainOptions(**state.options)
    model_path = Path(state.base_model)
    if not model_path.exists():
        raise TrainingError(f"the base model {model_path} is gone")
    examples, _ = read_examples(artifacts, state.agent, folder)
    require_libraries()
    qlora = qlora_wanted(options.qlora)

    import torch
    from peft import set_peft_model_state_dict
    from torch.optim.lr_scheduler import LambdaLR

    random.seed(options.seed)
    torch.manual_seed(options.seed)
    state.peak_memory_scope = "training" if reset_peak_memory() else "process"
    tok, base = load_base(
        model_path, qlora, checkpointing=options.gradient_checkpointing is not False
    )
    device = next(base.parameters()).device
    if not qlora and checkpointing_wanted(options, base.config, device):
        enable_checkpointing(base)
        log.info("%s: activations recomputed in the backward pass", state.agent)

    def encoded(split: str) -> list[Item]:
        out = []
        for e in examples:
            if e["split"] == split:
                focus = new_line_spans(e["messages"]) if options.focus == "new-lines" else None
                item = encode(tok, e["messages"], options.max_tokens, focus)
                if options.focus == "verdict":  # the loss on the verdict token only
                    item = first_token_only(item)
                if item[1] < len(item[0]):
                    out.append(item)
        return out

    train_examples = [e for e in examples if e["split"] == "train"]
    balanced = balance_labels(train_examples, options.seed)
    if len(balanced) > len(train_examples):
        log.info(
            "%s: the rarer verdict repeated to as many as the other (%d examples to %d)",
            state.agent,
            len(train_examples),
            len(balanced),
        )
    examples = balanced + [e for e in examples if e["split"] != "train"]
    train_items, held_items = encoded("train"), encoded("heldout")[:32]
    if not train_items:
        raise TrainingError(f"none of {state.agent}'s examples has a reply to learn from")
    if options.focus == "new-lines":
        replies = sum(len(item[0]) - item[1] for item in train_items)
        log.info(
            "%s learns from the reply lines the prompt does not hold: %d of %d reply tokens",
            state.agent,
            sum(learnt(item) for item in train_items),
            replies,
        )
    model = with_lora(base, options)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.0)
    per_epoch = math.ceil(len(train_items) / options.batch)
    total = options.max_steps or max(1, math.ceil(per_epoch * options.epochs))
    budget_s = options.max_minutes * 60 if options.max_minutes else None
    horizon = Horizon(total, options.warmup, budget_s)
    sched = LambdaLR(opt, horizon.factor)
    pad = tok.pad_token_id

    step, tokens = 0, 0
    state.steps = total
    _save_state(folder, state)
    checkpoint = folder / "checkpoint"
    if checkpoint.exists():
        set_peft_model_state_dict(model, torch.load(checkpoint / "adapter.pt"))
        saved = torch.load(checkpoint / "optim.pt")
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        marks = json.loads((checkpoint / "step.json").read_text())
        step, tokens = int(marks["step"]), int(marks["tokens"])
        log.info("training %s resumes at step %d of %d", state.id, step, total)
    elif state.heldout_loss_before is None:
        log.info("held-out loss before training (%d examples)...", len(held_items))
        state.heldout_loss_before = heldout_loss(model, held_items, pad, device)

    state.steps, state.step = total, step
    _save_state(folder, state)
    curve_items = held_items[:16]
    best = Best.load(folder) if checkpoint.exists() else Best()
    spent_before = state.elapsed_s
    last_eval = step
    t0 = time.monotonic()
    first = step
    losses: list[float] = []
    while step < total:
        epoch, i = divmod(step, per_epoch)
        order = list(range(len(train_items)))
        random.Random(options.seed * 1_000_003 + epoch).shuffle(order)
        chunk = [train_items[j] for j in order[i * options.batch : (i + 1) * options.batch]]
        batch = make_batch(chunk, pad, device)
        loss = reply_loss(model, batch)
        value = float(loss.detach())
        check_loss(value, step + 1, losses, options)
        losses.append(value)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += int(batch["attention_mask"].sum())
        elapsed = time.monotonic() - t0
        state.elapsed_s = round(spent_before + elapsed, 2)
        out_of_time = budget_s is not None and state.elapsed_s >= budget_s and step < total
        horizon.update(step, elapsed / (step - first), state.elapsed_s)
        sched.step()  # the next step's rate, on the horizon as re-estimated
        every = options.eval_every or max(1, math.ceil(horizon.steps / 4))
        row = ProgressRow(
            step=step,
            steps=horizon.steps,
            epoch=round(step / per_epoch, 3),
            loss=round(value, 5),
            lr=sched.get_last_lr()[0],
            tokens=tokens,
            elapsed_s=round(elapsed, 2),
            eta_s=0.0
            if out_of_time
            else round(elapsed / (step - first) * (horizon.steps - step), 1),
            at=_now(),
        )
        if curve_items and (step - last_eval >= every or step == total or out_of_time):
            last_eval = step
            held = heldout_loss(model, curve_items, pad, device)
            check_loss(held, step, [], options, what="held-out loss")
            state.heldout_curve.append((step, round(held, 5)))
            row.heldout_loss = round(held, 5)
            best.note(step, held, model)
        append_line(folder / "progress.jsonl", row.model_dump_json(exclude_none=True))
        state.step = step
        _save_state(folder, state)
        if on_step is not None:
            on_step(row)
        if out_of_time:
            state.stopped = (
                f"the time budget of {options.max_minutes:g} min ran out at step {step} of {total}"
            )
            log.info("training %s: %s", state.id, state.stopped)
            break
        if stop.is_set() and step < total:
            save_checkpoint(folder, model, opt, sched, step, tokens)
            best.save(folder)
            _save_state(folder, state)
            raise TrainingInterrupted(
                f"training {state.id} stopped at step {step} of {total}; its checkpoint is kept",
                hint=f"pantheon train --resume {state.id}   (or --abandon {state.id})",
            )
        if step % options.checkpoint_every == 0 and step < total:
            save_checkpoint(folder, model, opt, sched, step, tokens)
            best.save(folder)

    if best.weights is not None and best.step is not None and best.step < step:
        from peft import set_peft_model_state_dict

        log.info("training %s keeps step %d's adapter (lowest held-out loss)", state.id, best.step)
        set_peft_model_state_dict(model, best.weights)
    state.best_step = best.step if best.weights is not None else step
    log.info("held-out loss after training...")
    state.heldout_loss_after = heldout_loss(model, held_items, pad, device)
    model.save_pretrained(folder / "adapter", safe_serialization=True, save_embedding_layers=False)
    gguf = folder / f"{state.id}.gguf"
    peft_to_gguf(folder / "adapter", model_path, gguf)
    shutil.rmtree(checkpoint, ignore_errors=True)
    shutil.rmtree(folder / "best", ignore_errors=True)
    state.gguf = os.path.relpath(gguf, artifacts)
    state.peft = os.path.relpath(folder / "adapter", artifacts)
    state.peak_memory_mb, state.peak_gpu_mb = peak_memory(device)
    state.status = "done"
    state.finished_at = _now()
    _save_state(folder, state)
    with contextlib.suppress(Exception):
        del model, base
    gc.collect()  # peft's modules hold reference cycles: free them before any judging follows
    give_back_memory()
    return state
