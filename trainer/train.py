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
import json
import logging
import math
import os
import random
import shutil
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pantheon.core.errors import PantheonError
from pantheon.core.learn.files import (
    MIN_EXAMPLES,
    ProgressRow,
    TrainingState,
    read_state,
    training_id,
    training_root,
)
from pantheon.core.store.atomic import append_line, atomic_write_json

from .gguf_lora import peft_to_gguf
from .mine import DATA, STATS, TASKS, read_examples

__all__ = [
    "NotEnoughData",
    "TrainOptions",
    "TrainingError",
    "TrainingInterrupted",
    "abandon",
    "check_data",
    "require_libraries",
    "start",
    "train",
]

log = logging.getLogger(__name__)


class TrainingError(PantheonError):
    title = "Training"


class NotEnoughData(TrainingError):
    title = "Not enough data"


class TrainingInterrupted(TrainingError):
    title = "Training interrupted"


class TrainOptions(BaseModel):
    """How one adapter is trained; every value is checked, and a bad one is a TrainingError
    that names it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    rank: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    epochs: float = Field(default=2.0, gt=0)
    lr: float = Field(default=2e-4, gt=0, lt=1)
    """Peak learning rate; a linear warm-up, then a cosine decay to zero."""
    warmup: float = Field(default=0.1, ge=0, lt=1)
    """The share of the steps spent warming up."""
    batch: int = Field(default=4, ge=1)
    max_tokens: int = Field(default=1024, ge=32)
    """Longer examples lose the start of their prompt; the reply is always kept."""
    seed: int = 0
    min_examples: int = Field(default=MIN_EXAMPLES, ge=1)
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    checkpoint_every: int = Field(default=20, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many steps (default: the epochs' worth)."""
    max_minutes: float | None = Field(default=None, gt=0)
    """Stop when the training has run this long (the time budget of a night); the best
    checkpoint so far is the adapter."""
    eval_every: int | None = Field(default=None, ge=1)
    """Measure the held-out loss every N steps and keep the adapter where it was lowest
    (default: about eight times over the training, and at the end)."""
    explode: float = Field(default=4.0, gt=1)
    """A step whose loss is over this many times the first steps' is a diverging training: it
    stops, with the reason."""
    qlora: bool | None = None
    """4-bit NF4 base weights: None means when CUDA and bitsandbytes are present."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(x) for x in e['loc'])} {e.get('input')!r} ({e['msg'].lower()})"
                for e in exc.errors()
            ]
            raise TrainingError(
                "these training options cannot work: " + ", ".join(problems)
            ) from None

    def check(self) -> None:
        """Checked when made; kept for callers that check before a long step."""


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


def _encode(tok: Any, messages: list[dict[str, str]], max_tokens: int) -> tuple[list[int], int]:
    """Token ids of the whole chat, and how many of them are prompt."""
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):  # a template that rewrites earlier turns
        full = prompt + messages[-1]["content"] + (tok.eos_token or "")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = tok(full, add_special_tokens=False)["input_ids"]
    n_prompt = len(p_ids)
    if len(ids) > max_tokens:
        cut = len(ids) - max_tokens
        ids, n_prompt = ids[cut:], max(0, n_prompt - cut)
    return ids, n_prompt


def require_libraries() -> None:
    """Raise a clear TrainingError when the train extra is not installed."""
    try:
        import gguf  # noqa: F401
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise TrainingError(
            f"training needs torch, transformers, peft and gguf ({exc.name} is missing)",
            hint="pip install 'pantheon[train]'",
        ) from exc


def _load(model_path: Path, qlora: bool):
    require_libraries()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    stat = model_path.stat()
    key = (str(model_path), stat.st_size, stat.st_mtime_ns)
    if not qlora and _BASE[0] is not None and _BASE[0][0] == key:
        # the same base again in this process: its frozen weights are shared, not read again
        _, tok, config, weights, buffers = _BASE[0]
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(weights, assign=True)
        for name, buf in buffers.items():  # the ones a state dict leaves out (rotary tables)
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner)._buffers[attr] = buf
        model.tie_weights()
        return tok, model
    kw: dict[str, Any] = {"gguf_file": model_path.name}
    tok = AutoTokenizer.from_pretrained(model_path.parent, **kw)
    if qlora:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        kw["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(model_path.parent, dtype=torch.float32, **kw)
    if qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not qlora:
        _BASE[0] = (key, tok, model.config, dict(model.state_dict()), dict(model.named_buffers()))
    return tok, model


_BASE: list[Any] = [None]
"""The last base model read in this process: (file key, tokenizer, config, weights, buffers).
Training never changes the frozen base weights, so a second training shares them."""


def _qlora_wanted(option: bool | None) -> bool:
    import torch

    if option is not None:
        if option and not torch.cuda.is_available():
            raise TrainingError("QLoRA 4-bit needs a CUDA GPU, and this machine has none")
        return option
    if not torch.cuda.is_available():
        return False
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def _batch(items: list[tuple[list[int], int]], pad: int, device: Any):
    import torch

    width = max(len(ids) for ids, _ in items)
    input_ids, labels, mask = [], [], []
    for ids, n_prompt in items:
        fill = width - len(ids)
        input_ids.append(ids + [pad] * fill)
        labels.append([-100] * n_prompt + ids[n_prompt:] + [-100] * fill)
        mask.append([1] * len(ids) + [0] * fill)
    return {
        "input_ids": torch.tensor(input_ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def _heldout_loss(model: Any, items: list[tuple[list[int], int]], pad: int, device: Any) -> float:
    import torch

    if not items:
        return float("nan")
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for item in items:
            out = model(**_batch([item], pad, device))
            n = len(item[0]) - item[1]
            total += float(out.loss) * n
            count += n
    model.train()
    return total / max(count, 1)


def _save_checkpoint(folder: Path, model: Any, opt: Any, sched: Any, step: int, tokens: int):
    import torch
    from peft import get_peft_model_state_dict

    tmp = folder / ".tmp-checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(get_peft_model_state_dict(model, save_embedding_layers=False), tmp / "adapter.pt")
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optim.pt")
    (tmp / "step.json").write_text(json.dumps({"step": step, "tokens": tokens}))
    old = folder / ".old-checkpoint"
    final = folder / "checkpoint"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def check_loss(
    value: float, step: int, earlier: list[float], options: TrainOptions, what: str = "loss"
) -> None:
    """Stop a training whose loss is no number, or explodes: over ``options.explode`` times
    what its first steps measured."""
    if not math.isfinite(value):
        raise TrainingError(
            f"the {what} became {value} at step {step}: the training diverged "
            f"(learning rate {options.lr:g})",
            hint="start again with a lower --lr (a tenth of it, say)",
        )
    head = sorted(earlier[:5])
    if len(head) >= 3:
        reference = head[len(head) // 2]
        if reference > 0 and value > options.explode * reference:
            raise TrainingError(
                f"the {what} exploded at step {step}: {value:.3g}, over {options.explode:g} "
                f"times the first steps' {reference:.3g} (learning rate {options.lr:g})",
                hint="start again with a lower --lr (a tenth of it, say)",
            )


class _Best:
    """The adapter where the held-out loss was lowest: kept in memory, and on disk beside the
    checkpoint so that a resumed training still knows it."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.loss: float | None = None
        self.weights: dict[str, Any] | None = None

    def note(self, step: int, loss: float, model: Any) -> None:
        """Keep the model's adapter when this held-out loss is the lowest yet."""
        if self.loss is not None and loss >= self.loss:
            return
        self.step, self.loss = step, loss
        from peft import get_peft_model_state_dict

        self.weights = {
            k: v.detach().clone()
            for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()
        }

    def save(self, folder: Path) -> None:
        import torch

        if self.weights is None or self.step is None:
            return
        tmp = folder / ".tmp-best"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(self.weights, tmp / "adapter.pt")
        (tmp / "best.json").write_text(json.dumps({"step": self.step, "loss": self.loss}))
        shutil.rmtree(folder / "best", ignore_errors=True)
        tmp.rename(folder / "best")

    @classmethod
    def load(cls, folder: Path) -> _Best:
        import torch

        best = cls()
        try:
            marks = json.loads((folder / "best" / "best.json").read_text())
            best.weights = torch.load(folder / "best" / "adapter.pt")
            best.step, best.loss = int(marks["step"]), float(marks["loss"])
        except (OSError, ValueError, KeyError):
            return cls()
        return best


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
    qlora = _qlora_wanted(options.qlora)

    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import get_cosine_schedule_with_warmup

    random.seed(options.seed)
    torch.manual_seed(options.seed)
    tok, base = _load(model_path, qlora)
    device = next(base.parameters()).device

    def encode(split: str) -> list[tuple[list[int], int]]:
        out = []
        for e in examples:
            if e["split"] == split:
                ids, n_prompt = _encode(tok, e["messages"], options.max_tokens)
                if n_prompt < len(ids):
                    out.append((ids, n_prompt))
        return out

    train_items, held_items = encode("train"), encode("heldout")[:32]
    if not train_items:
        raise TrainingError(f"none of {state.agent}'s examples has a reply to learn from")
    with warnings.catch_warnings():  # peft's use of a renamed transformers call
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(
            base,
            LoraConfig(
                r=options.rank,
                lora_alpha=options.alpha,
                lora_dropout=options.dropout,
                target_modules=list(options.targets),
                task_type="CAUSAL_LM",
            ),
        )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.0)
    per_epoch = math.ceil(len(train_items) / options.batch)
    total = options.max_steps or max(1, math.ceil(per_epoch * options.epochs))
    sched = get_cosine_schedule_with_warmup(opt, int(total * options.warmup), total)
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
        state.heldout_loss_before = _heldout_loss(model, held_items, pad, device)

    state.steps, state.step = total, step
    _save_state(folder, state)
    every = options.eval_every or max(1, math.ceil(total / 4))
    curve_items = held_items[:16]
    best = _Best.load(folder) if checkpoint.exists() else _Best()
    budget_s = options.max_minutes * 60 if options.max_minutes else None
    spent_before = state.elapsed_s
    t0 = time.monotonic()
    first = step
    losses: list[float] = []
    while step < total:
        epoch, i = divmod(step, per_epoch)
        order = list(range(len(train_items)))
        random.Random(options.seed * 1_000_003 + epoch).shuffle(order)
        chunk = [train_items[j] for j in order[i * options.batch : (i + 1) * options.batch]]
        batch = _batch(chunk, pad, device)
        loss = model(**batch).loss
        value = float(loss.detach())
        check_loss(value, step + 1, losses, options)
        losses.append(value)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += int(batch["attention_mask"].sum())
        elapsed = time.monotonic() - t0
        state.elapsed_s = round(spent_before + elapsed, 2)
        out_of_time = budget_s is not None and state.elapsed_s >= budget_s and step < total
        row = ProgressRow(
            step=step,
            steps=total,
            epoch=round(step / per_epoch, 3),
            loss=round(value, 5),
            lr=sched.get_last_lr()[0],
            tokens=tokens,
            elapsed_s=round(elapsed, 2),
            eta_s=0.0 if out_of_time else round(elapsed / (step - first) * (total - step), 1),
            at=_now(),
        )
        if curve_items and (step % every == 0 or step == total or out_of_time):
            held = _heldout_loss(model, curve_items, pad, device)
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
            _save_checkpoint(folder, model, opt, sched, step, tokens)
            best.save(folder)
            _save_state(folder, state)
            raise TrainingInterrupted(
                f"training {state.id} stopped at step {step} of {total}; its checkpoint is kept",
                hint=f"pantheon train --resume {state.id}   (or --abandon {state.id})",
            )
        if step % options.checkpoint_every == 0 and step < total:
            _save_checkpoint(folder, model, opt, sched, step, tokens)
            best.save(folder)

    if best.weights is not None and best.step is not None and best.step < step:
        from peft import set_peft_model_state_dict

        log.info("training %s keeps step %d's adapter (lowest held-out loss)", state.id, best.step)
        set_peft_model_state_dict(model, best.weights)
    state.best_step = best.step if best.weights is not None else step
    log.info("held-out loss after training...")
    state.heldout_loss_after = _heldout_loss(model, held_items, pad, device)
    model.save_pretrained(folder / "adapter", safe_serialization=True, save_embedding_layers=False)
    gguf = folder / f"{state.id}.gguf"
    peft_to_gguf(folder / "adapter", model_path, gguf)
    shutil.rmtree(checkpoint, ignore_errors=True)
    shutil.rmtree(folder / "best", ignore_errors=True)
    state.gguf = os.path.relpath(gguf, artifacts)
    state.peft = os.path.relpath(folder / "adapter", artifacts)
    state.status = "done"
    state.finished_at = _now()
    _save_state(folder, state)
    with contextlib.suppress(Exception):
        del model, base
    return state
