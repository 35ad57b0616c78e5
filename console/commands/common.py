"""What several commands share: their common options and progress lines."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from pantheon.core.work.grounding import GROUNDED_MIN

log = logging.getLogger("pantheon")

DEFAULT_ARTIFACTS = Path("artifacts")


def artifacts_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--artifacts",
        type=Path,
        default=DEFAULT_ARTIFACTS,
        metavar="DIR",
        help="the artifacts directory (default: ./artifacts)",
    )


def speculative_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--speculative",
        choices=("ngram", "none"),
        default="ngram",
        help="llama.cpp servers: draft tokens from text already in the context (the file a fix "
        "copies back, the page a description quotes) and verify them in one batch (ngram, "
        "default), or decode one token a step (none); each token is still the model's own choice",
    )


def gate_args(p: argparse.ArgumentParser) -> None:
    """The reviewers' audits: κ and the canaries, and when they pause merges."""
    p.add_argument(
        "--kappa-threshold",
        type=float,
        default=0.6,
        metavar="K",
        help="pause merges when reviewer agreement κ falls under K (default: 0.6)",
    )
    p.add_argument(
        "--kappa-min-pairs",
        type=int,
        default=20,
        metavar="N",
        help="... over at least N review pairs (default: 20)",
    )
    p.add_argument(
        "--canary-every",
        type=int,
        default=10,
        metavar="N",
        help="plant one in N reviewed changes again with a known defect (a canary, never "
        "merged) and score the reviewers on it (default: 10; 0: no canaries)",
    )
    p.add_argument(
        "--canary-max-miss",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="pause merges when the reviewers pass more than SHARE of the canaries (default: "
        "0.5), unless their calibration measured them as carrying no information",
    )
    p.add_argument(
        "--canary-min",
        type=int,
        default=5,
        metavar="N",
        help="... over at least N canaries (default: 5)",
    )
    p.add_argument(
        "--grounding-min",
        type=float,
        default=GROUNDED_MIN,
        metavar="SHARE",
        help="a docs description must have at least SHARE of its content words on its page, or "
        f"the writer is asked again and the test gate fails it (default: {GROUNDED_MIN}; 0: not "
        "checked)",
    )


def model_endpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        metavar="URL",
        action="append",
        help="the model server to use (default: the one `pantheon serve` runs for ARTIFACTS); "
        "repeat it for several servers of one model: calls go to the least busy, each agent "
        "kept on one server, and a dead server's calls to the others",
    )
    p.add_argument(
        "--backend",
        choices=["llama.cpp", "openvino", "vllm", "llama-cpp-python"],
        default=None,
        help="what kind of server --endpoint is (default: llama.cpp); for a night without "
        "--endpoint, the kind it serves: llama.cpp (default), openvino (the openvino extra, "
        "a model `pantheon models` lists for it) or vllm",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a model host that is yours although it is not loopback or private (repeatable)",
    )
    p.add_argument(
        "--stall-s",
        type=float,
        default=120.0,
        metavar="S",
        help="a model call that shows no progress for this long (no token, and the server's "
        "own counters still) is cancelled, posted once more, then fails as a stall "
        "(default: 120)",
    )


def sandbox_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run code jobs unconfined, with the network and every file writable (by default "
        "model-written code runs in a bubblewrap sandbox, and code jobs refuse to start "
        "without one: `pantheon doctor` says whether it works here)",
    )


def quiet_logging_for_textual() -> None:
    """While a screen is drawn, log records go to Textual's log, never over the screen."""
    from textual.logging import TextualHandler

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            root.removeHandler(handler)
    root.addHandler(TextualHandler())


def progress_printer(stream=None) -> Callable[[int, int, str], None]:
    """A download's progress on ``stream`` (stderr): one line redrawn on a terminal, a line
    each tenth in a log."""
    from pantheon.console.progress import ProgressLine, bar

    line = ProgressLine(stream)

    def show(done: int, total: int, what: str) -> None:
        pct = int(done * 100 / total) if total else 100
        text = f"{what}: {bar(pct)} {pct:3d}% {done / 1e6:,.0f}/{total / 1e6:,.0f} MB"
        line.show(text, tenth=pct // 10, final=done >= total)

    return show
