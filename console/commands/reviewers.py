"""``pantheon reviewers``: what the scored reviewers are measured to know, and their calibration."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from pantheon.console.commands.common import artifacts_arg


def add_reviewers(sub: Any) -> None:
    p = sub.add_parser(
        "reviewers",
        help="the scored reviewers' calibration: thresholds and measured AUROC",
        description="Show the reviewers' calibration (ARTIFACTS/reviewers/calibration.json), "
        "or measure it again with `calibrate`: the shipped corpus's labelled changes (real "
        "fixes and planted defects, real pages and wrong descriptions) scored by each reviewer "
        "of the shipped flows, the threshold fit on half the problems, AUROC with its 95% "
        "interval measured on the other half. A reviewer whose interval holds 0.5 carries no "
        "information.",
    )
    p.add_argument("action", nargs="?", choices=["show", "calibrate"], default="show")
    p.add_argument(
        "--model",
        default=None,
        help="calibrate: the reviewers' model, served here (default: qwen2.5-coder-0.5b)",
    )
    p.add_argument(
        "--adapter",
        default=None,
        help="calibrate: a loaded LoRA adapter's name; when a training of ARTIFACTS made it, "
        "only the problems and pages that training held out are used (it never saw them)",
    )
    p.add_argument(
        "--endpoint",
        default=None,
        metavar="URL",
        help="calibrate: a running server of that model instead of starting one",
    )
    p.add_argument("--code", type=int, default=30, metavar="N", help="HumanEval problems (30)")
    p.add_argument("--docs", type=int, default=20, metavar="N", help="reference pages (20)")
    p.add_argument(
        "--max-defects-through",
        type=float,
        default=0.2,
        metavar="SHARE",
        help="the share of defects a threshold may let through (default: 0.2)",
    )
    artifacts_arg(p)


def cmd_reviewers(args: argparse.Namespace) -> int:
    from pantheon.core.observe.quality import read_calibration, write_calibration

    artifacts = Path(args.artifacts)
    if args.action == "show":
        found = read_calibration(artifacts)
        if not found:
            print(
                f"no calibration in {artifacts}: `pantheon reviewers calibrate` measures the "
                "scored reviewers on the corpus's labelled changes"
            )
            return 0
        for c in found:
            who = f"{c.model}{' + ' + c.adapter if c.adapter else ''}"
            print(f"{c.kind:4} {c.reviewer:9} {who}: {c.describe()} (measured {c.at})")
        return 0
    found = asyncio.run(_calibrate(args))
    path = write_calibration(artifacts, found)
    for c in found:
        print(f"{c.kind:4} {c.reviewer:9} {c.describe()}")
    print(f"written to {path}")
    return 0


async def _calibrate(args: argparse.Namespace) -> list[Any]:
    from pantheon.core.model.client import LLMClient
    from pantheon.core.model.files import DEFAULT_MODEL
    from pantheon.core.model.server import ModelServer, ServerConfig
    from pantheon.core.run.calibrate import calibrate

    model = args.model or DEFAULT_MODEL

    def progress(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"\rscored {done}/{total}", end="\n" if done == total else "", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="pantheon-reviewers-") as tmp:
        server = None
        endpoint = args.endpoint
        if endpoint is not None:
            from pantheon.core.model.guard import check_endpoint

            check_endpoint(endpoint)  # local only: refused before a byte is sent
        else:
            server = ModelServer(Path(tmp), ServerConfig(model=model, port=0, parallel=4))
            endpoint = (await asyncio.to_thread(server.start)).endpoint
        try:
            keys = _held_out_keys(Path(args.artifacts), args.adapter) if args.adapter else None
            async with LLMClient(endpoint, timeout_s=900) as llm:
                return await calibrate(
                    llm,
                    model=model,
                    adapter=args.adapter,
                    code=args.code,
                    docs=args.docs,
                    max_defects_through=args.max_defects_through,
                    progress=progress,
                    keys=keys,
                )
        finally:
            if server is not None:
                await asyncio.to_thread(server.stop)


def _held_out_keys(artifacts: Path, adapter: str) -> set[str] | None:
    """The split keys the training that made ``adapter`` held out (None: no such training
    here, so every problem is used, and the figures may include what it trained on)."""
    from pantheon.core.learn.files import list_trainings, training_root
    from pantheon.core.model.server import artifact_name
    from pantheon.trainer.examples import read_examples

    for state in list_trainings(artifacts):
        if state.gguf and artifact_name(artifacts / state.gguf) == adapter:
            folder = training_root(artifacts) / state.id
            examples, _ = read_examples(artifacts, state.agent, folder)
            keys = {e["key"] for e in examples if e["split"] == "heldout" and e.get("key")}
            print(
                f"{adapter} was trained by {state.id}: calibrating on the {len(keys)} problems "
                "and pages it held out",
                file=sys.stderr,
            )
            return keys
    print(
        f"no training in {artifacts} made {adapter}: calibrating on every problem, some of "
        "which it may have trained on",
        file=sys.stderr,
    )
    return None
