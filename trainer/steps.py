"""What a training's steps are made of: the base model read once a process, batches whose
prompt tokens are masked, the held-out loss, checkpoints written whole or not at all, the check
that stops a diverging loss, and the best adapter so far."""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

from .options import TrainingError, TrainOptions

__all__ = [
    "Best",
    "Horizon",
    "Item",
    "balance_labels",
    "check_loss",
    "checkpointing_wanted",
    "enable_checkpointing",
    "encode",
    "first_token_only",
    "heldout_loss",
    "learnt",
    "load_base",
    "make_batch",
    "new_line_spans",
    "proc_kib",
    "qlora_wanted",
    "reply_loss",
    "require_libraries",
    "save_checkpoint",
    "with_lora",
]


def balance_labels(examples: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """A reviewer's labelled examples with the rarer verdict repeated (in a fixed shuffle) until
    both are as many; anything else as it is. The labelled changes are mostly fails (five planted
    defects to each real fix): trained on them as they come, a reviewer learns to say fail
    (on qwen2.5-coder-0.5b, 36 steps of 328 fails and 82 passes turned the base model's 18 of 18
    real fixes passed into 4 of 18)."""
    if not examples or not all("label" in e for e in examples):
        return examples
    sides = [[e for e in examples if e["label"]], [e for e in examples if not e["label"]]]
    if not all(sides):
        return examples
    few, many = sorted(sides, key=len)
    order = list(few)
    random.Random(seed).shuffle(order)
    extra = [order[i % len(order)] for i in range(len(many) - len(few))]
    return [*examples, *extra]


class Horizon:
    """The steps the learning-rate schedule spans (a linear warm-up over ``warmup`` of them, then
    a cosine decay to zero): the epochs' worth, or under a time budget the steps the budget will
    allow at the pace measured so far, re-estimated after every step. A training that stops at
    its budget has then warmed up and decayed within what it ran, instead of stopping part way
    up the warm-up of a schedule made for all its data."""

    def __init__(self, total: int, warmup: float, budget_s: float | None = None) -> None:
        self.total = total
        self.warmup = warmup
        self.budget_s = budget_s
        self.steps = total

    def factor(self, step: int) -> float:
        """The share of the peak learning rate at ``step`` (what LambdaLR multiplies by)."""
        warm = int(self.steps * self.warmup)
        if step < warm:
            return step / max(1, warm)
        progress = (step - warm) / max(1, self.steps - warm)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    def update(self, step: int, pace_s: float, spent_s: float) -> None:
        """After ``step``: at ``pace_s`` a step, with ``spent_s`` of the budget gone."""
        if self.budget_s is None or pace_s <= 0:
            return
        left = max(0, int((self.budget_s - spent_s) / pace_s))
        self.steps = max(step + 1, min(self.total, step + left))


Item = tuple[list[int], int] | tuple[list[int], int, list[bool]]
"""An encoded example: its token ids, how many are prompt, and which of the reply's tokens
are learnt from (all of them when that is left out)."""


def new_line_spans(messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """The character spans of the reply's lines that no earlier message holds (compared
    stripped; blank lines never count): what a fix changes, in a whole-file reply that is
    otherwise nearly all lines copied from the prompt."""
    seen = {line.strip() for m in messages[:-1] for line in m["content"].splitlines()}
    spans: list[tuple[int, int]] = []
    pos = 0
    for line in messages[-1]["content"].splitlines(keepends=True):
        text = line.strip()
        if text and text not in seen:
            spans.append((pos, pos + len(line)))
        pos += len(line)
    return spans


def encode(
    tok: Any,
    messages: list[dict[str, str]],
    max_tokens: int,
    focus: list[tuple[int, int]] | None = None,
) -> Item:
    """Token ids of the whole chat, and how many of them are prompt. With ``focus`` (character
    spans of the reply), only the reply's tokens that touch a span are learnt from, and what
    follows the reply (the end of the turn, so the model still learns to stop); a reply with
    no span, or a tokenizer that gives no offsets, is learnt from whole."""
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):  # a template that rewrites earlier turns
        full = prompt + messages[-1]["content"] + (tok.eos_token or "")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    keep: list[bool] | None = None
    if focus:
        try:
            enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
        except (NotImplementedError, KeyError, ValueError):  # a slow tokenizer: no offsets
            ids, offsets = tok(full, add_special_tokens=False)["input_ids"], None
        if offsets is not None:
            start, end = len(prompt), len(prompt) + len(messages[-1]["content"])
            spans = [(start + a, start + b) for a, b in focus]
            keep = [
                a >= end or any(a < y and b > x for x, y in spans) for a, b in offsets[len(p_ids) :]
            ]
            reply_kept = [
                k for k, (a, _) in zip(keep, offsets[len(p_ids) :], strict=True) if a < end
            ]
            if not any(reply_kept):
                keep = None  # nothing of the reply itself: learn it whole
    else:
        ids = tok(full, add_special_tokens=False)["input_ids"]
    n_prompt = len(p_ids)
    if len(ids) > max_tokens:
        cut = len(ids) - max_tokens
        ids, n_prompt = ids[cut:], max(0, n_prompt - cut)
        if keep is not None and n_prompt == 0:  # the cut reached the reply
            keep = keep[len(keep) - len(ids) :]
    return (ids, n_prompt) if keep is None else (ids, n_prompt, keep)


def first_token_only(item: Item) -> Item:
    """The item learning from its reply's first token only: a verifier's verdict word, not
    the end of the turn after it."""
    ids, n_prompt = item[0], item[1]
    reply = len(ids) - n_prompt
    return (ids, n_prompt, [True] + [False] * (reply - 1)) if reply > 0 else item


def learnt(item: Item) -> int:
    """How many of an item's tokens are learnt from."""
    ids, n_prompt = item[0], item[1]
    return sum(item[2]) if len(item) == 3 else len(ids) - n_prompt


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


def load_base(model_path: Path, qlora: bool, *, checkpointing: bool = True):
    """The tokenizer and the base model: 4-bit with ``qlora``, prepared for training by peft,
    which recomputes its activations unless ``checkpointing`` is False."""
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

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not qlora:
        _BASE[0] = (key, tok, model.config, dict(model.state_dict()), dict(model.named_buffers()))
    return tok, model


_BASE: list[Any] = [None]
"""The last base model read in this process: (file key, tokenizer, config, weights, buffers).
Training never changes the frozen base weights, so a second training shares them."""


def step_activations(config: Any, batch: int, tokens: int) -> float | None:
    """The bytes a training step keeps for its backward pass, from the model's shape (None for
    a shape this does not know): per layer and token, float32 copies of the hidden state (the
    norms, attention's inputs and output, the residual) and of the MLP's intermediate
    activations, and — with eager attention only, SDPA keeps none — attention's weights."""
    hidden = getattr(config, "hidden_size", None)
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(hidden, int) or not isinstance(layers, int):
        return None
    inter = getattr(config, "intermediate_size", None) or 4 * hidden
    per_token = ACTIVATION_HIDDEN * hidden + ACTIVATION_INTER * inter
    if getattr(config, "_attn_implementation", None) == "eager":
        per_token += 2 * (getattr(config, "num_attention_heads", None) or 1) * tokens
    return 4.0 * layers * batch * tokens * per_token


ACTIVATION_HIDDEN, ACTIVATION_INTER = 10, 5
"""Copies of a layer's hidden state and intermediate activations kept per token: fitted to
Qwen2.5-Coder-0.5B, whose step of two 1 536-token examples adds 9.5 GB to the loaded model
(``bench/train_memory.py``); the estimate says 9.8."""


def proc_kib(path: str, field: str) -> int | None:
    """A ``field:  N kB`` line of a /proc file (``/proc/self/status``'s VmHWM), or None."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def free_memory(device: Any) -> float | None:
    """Bytes this machine can still give (the GPU's free memory on CUDA), or None."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    available = proc_kib("/proc/meminfo", "MemAvailable")
    return None if available is None else available * 1024.0


def checkpointing_wanted(options: TrainOptions, config: Any, device: Any = "cpu") -> bool:
    """The option, or (None) whether a step's activations would take more than
    three quarters of the memory left once the base model is read."""
    if options.gradient_checkpointing is not None:
        return options.gradient_checkpointing
    free = free_memory(device)
    need = step_activations(config, options.batch, options.max_tokens)
    return free is not None and need is not None and need > 0.75 * free


def enable_checkpointing(model: Any) -> None:
    """Gradient (activation) checkpointing, not reentrant: the frozen base's inputs need no
    gradient for the LoRA weights to get one."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def with_lora(base: Any, options: TrainOptions):
    """The base model with the options' LoRA adapter on it, ready to train."""
    import warnings

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.targets),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft's use of a renamed transformers call
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(base, config)


def qlora_wanted(option: bool | None) -> bool:
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


def make_batch(items: list[Item], pad: int, device: Any):
    import torch

    width = max(len(item[0]) for item in items)
    input_ids, labels, mask = [], [], []
    for item in items:
        ids, n_prompt = item[0], item[1]
        fill = width - len(ids)
        input_ids.append(ids + [pad] * fill)
        reply = ids[n_prompt:]
        if len(item) == 3:
            reply = [t if k else -100 for t, k in zip(reply, item[2], strict=True)]
        labels.append([-100] * n_prompt + reply + [-100] * fill)
        mask.append([1] * len(ids) + [0] * fill)
    return {
        "input_ids": torch.tensor(input_ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def reply_loss(model: Any, batch: dict[str, Any]):
    """The mean cross-entropy over the tokens learnt from — what the model's own loss is — with
    the output head applied at those positions only. A prompt's logits are never used, and a
    vocabulary of 150 000 makes each position's row 600 KB in float32 (and as much again for
    its softmax and its gradient): on Qwen2.5-Coder-0.5B, a step of two 1 536-token code
    examples takes 0.70x the time and 0.69x the peak memory of the model's own loss
    (``bench/train_memory.py``)."""
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body, head = getattr(base, "base_model", None), base.get_output_embeddings()
    config = base.config
    scaled = any(
        getattr(config, name, None) not in (None, 1, 1.0)
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )
    if body is None or body is base or head is None or scaled:
        return model(**batch).loss  # a head of its own making (Gemma's softcap, Cohere's scale)
    hidden = body(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    target = batch["labels"][:, 1:]
    keep = target != -100
    logits = head(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, target[keep])


def heldout_loss(model: Any, items: list[Item], pad: int, device: Any) -> float:
    import torch

    if not items:
        return float("nan")
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for item in items:
            loss = reply_loss(model, make_batch([item], pad, device))
            n = learnt(item)
            total += float(loss) * n
            count += n
    model.train()
    return total / max(count, 1)


def save_checkpoint(folder: Path, model: Any, opt: Any, sched: Any, step: int, tokens: int):
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


class Best:
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
    def load(cls, folder: Path) -> Best:
        import torch

        best = cls()
        try:
            marks = json.loads((folder / "best" / "best.json").read_text())
            best.weights = torch.load(folder / "best" / "adapter.pt")
            best.step, best.loss = int(marks["step"]), float(marks["loss"])
        except (OSError, ValueError, KeyError):
            return cls()
        return best
