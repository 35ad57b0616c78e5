"""The options of one adapter's training, checked when made, and the errors the trainer raises."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pantheon.core.errors import PantheonError
from pantheon.core.learn.files import MIN_EXAMPLES

__all__ = [
    "EvaluationError",
    "NotEnoughData",
    "TrainOptions",
    "TrainingError",
    "TrainingInterrupted",
]


class EvaluationError(PantheonError):
    title = "Evaluation"


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
    (default: four times over the training; the end is always measured)."""
    explode: float = Field(default=4.0, gt=1)
    """A step whose loss is over this many times the first steps' is a diverging training: it
    stops, with the reason."""
    focus: Literal["reply", "new-lines", "verdict"] | None = None
    """What of a reply is learnt from: all of it, only its lines the prompt does not hold
    (and the end of the turn) — a code writer's whole-file reply is nearly all copied lines,
    which teach nothing — or its first token only (a verifier: the verdict word, pass or
    fail). None: new lines for a code writer (an agent judged by pass@1), the verdict for a
    reviewer whose examples are all one-word verdicts, the whole reply for the others."""
    qlora: bool | None = None
    """4-bit NF4 base weights: None means when CUDA and bitsandbytes are present."""
    gradient_checkpointing: bool | None = None
    """Recompute each layer's activations in the backward pass instead of keeping them: a
    step's activations shrink to one layer's, for about a third more compute. None: when the
    step's activations, as estimated from the model's shape, would not fit beside its weights
    in the memory this machine has free; with QLoRA, unless False (peft prepares it so)."""

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
