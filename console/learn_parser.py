"""The learn loop's command-line arguments: the parsers of ``pantheon traces``, ``pantheon
train``, ``pantheon learn`` and ``pantheon promote``, and the learn loop's options that
``pantheon night --learn`` shares.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from pantheon.trainer.labels import CORPUS_PROBLEMS

__all__ = ["TRAIN_EPILOG", "add_parsers", "learn_args"]

TRAIN_EPILOG = """\
examples:
  pantheon traces mine                        green traces -> training/<agent>/data.jsonl
  pantheon train doc.frontmatter              train its adapter on the served model's weights
  pantheon train doc.frontmatter --promote    ... then judge it and promote it if it helps
  pantheon train --resume ID                  go on with an interrupted training
  pantheon promote doc.frontmatter            judge its latest adapter on the held-out jobs
  pantheon promote --rollback doc.frontmatter give it its previous adapter back
  pantheon learn --max-minutes 60             mine, train, judge, promote every agent it can
"""


def add_parsers(sub: Any, artifacts_arg) -> None:
    p = sub.add_parser(
        "traces",
        help="mine the night's green traces into per-agent training data",
        description=textwrap.dedent(
            """\
            Mine the artifacts directory: each model call a worker agent made in a green run
            (tests passed, both reviewers passed, not rejected in the morning review) becomes a
            chat example in training/<agent>/data.jsonl, deduplicated; of a code fix, only the
            candidate that passed. Reviewers learn only from labelled changes: the canaries and
            the morning review's decisions, and with --corpus the labelled changes built from
            the shipped corpus (real fixes to pass, planted defects to fail). Each task is held
            out or not by a hash of its key (the file it works on), so no task is on both
            sides. Held-out jobs, green or not, are the tasks `pantheon promote` judges an
            adapter on (training/<agent>/tasks.jsonl)."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["mine"], help="mine: write the data sets")
    p.add_argument(
        "--heldout",
        type=float,
        default=0.2,
        metavar="SHARE",
        help="the share of jobs held out (default: 0.2)",
    )
    p.add_argument("--agent", action="append", metavar="AGENT", help="only this agent (repeatable)")
    p.add_argument(
        "--corpus",
        type=int,
        nargs="?",
        const=CORPUS_PROBLEMS,
        default=0,
        metavar="PROBLEMS",
        help="add the labelled changes of the shipped corpus to the reviewers' examples: the "
        f"real fix and each planted defect of PROBLEMS HumanEval problems (default: "
        f"{CORPUS_PROBLEMS}, about six changes each) and of the demo's docs pages; and the real "
        "fix of every mutant of those problems to codegen's (150 takes them all)",
    )
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    artifacts_arg(p)

    p = sub.add_parser(
        "train",
        help="train an agent's LoRA adapter on its mined data",
        description=textwrap.dedent(
            """\
            Train a LoRA adapter for one agent on the weights of the model the server runs
            (read from its GGUF file), on CPU in float32 or as QLoRA 4-bit on a CUDA GPU with
            bitsandbytes. Progress goes to training/<id>/progress.jsonl and to the terminal.
            Ctrl-C finishes the step and keeps a checkpoint: --resume goes on from it,
            --abandon gives it up. Needs the train extra: pip install 'pantheon[train]'."""
        ),
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("agent", nargs="?", help="the agent (see `pantheon traces mine`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", metavar="ID", help="go on with an interrupted or failed training")
    g.add_argument("--abandon", metavar="ID", help="give up a stopped training")
    g.add_argument("--list", action="store_true", help="list the trainings")
    p.add_argument(
        "--model",
        help="the base model, a name of `pantheon models` or a GGUF file (default: the one the "
        "model server of ARTIFACTS runs, else qwen2.5-coder-0.5b)",
    )
    _train_args(p)
    p.add_argument(
        "--promote",
        action="store_true",
        help="when trained, judge it on the held-out jobs and promote it if it helps",
    )
    _judge_args(p)
    artifacts_arg(p)

    p = sub.add_parser(
        "learn",
        help="the whole learn loop: mine, train, judge and promote each agent that can learn",
        description=textwrap.dedent(
            """\
            Mine the artifacts directory, then train an adapter for each agent with enough new
            green examples (on the model that answered its calls, within --max-minutes each,
            keeping the checkpoint with the lowest held-out loss), judge it on held-out tasks
            as its kind is judged (a code writer by pass@1 of one greedy fix, a reviewer by its
            verdicts on labelled changes, any other agent through its whole flow) and promote
            it when it wins beyond chance. The next night's model server serves it. What
            happened is training/learn.json, and the morning report shows it.
            `pantheon night --learn` runs this after the queue drains."""
        ),
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    learn_args(p)
    artifacts_arg(p)

    p = sub.add_parser(
        "promote",
        help="judge an adapter on held-out jobs; promote it only on a measured gain",
        description=textwrap.dedent(
            """\
            Run the agent's held-out jobs through their real flows (tests and both reviewers),
            once with the base model and once with the adapter, on a model server started for
            the purpose, from each job's original commit in a scratch clone. The adapter is
            promoted into adapters/registry.json only when it passes more jobs than the base
            model beyond chance (McNemar's exact test, one-sided, p < --significance). A code
            writer is judged by pass@1 on held-out tasks, a reviewer by its verdicts on held-out
            labelled changes, and a verifier (a scored reviewer, trained on one-word verdicts)
            as a scorer: its AUROC against the base model's on the same held-out changes,
            DeLong's paired test in place of McNemar's. The next model server started for the
            artifacts loads it, and the agent's calls use it."""
        ),
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target", nargs="?", metavar="AGENT|ID", help="an agent (its latest training) or a training"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--rollback", metavar="AGENT", help="give the agent its previous adapter (or none)"
    )
    g.add_argument("--list", action="store_true", help="each agent's promoted adapter")
    _judge_args(p)
    artifacts_arg(p)


def _train_args(p: argparse.ArgumentParser, *, budget_default: float | None = None) -> None:
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r (default: 8)")
    p.add_argument("--alpha", type=int, default=16, help="LoRA alpha (default: 16)")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the data (default: 2)")
    p.add_argument(
        "--lr", type=float, default=2e-4, help="peak learning rate, cosine decay (default: 2e-4)"
    )
    p.add_argument("--batch", type=int, default=4, help="examples per step (default: 4)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps")
    p.add_argument(
        "--max-minutes",
        type=float,
        metavar="M",
        default=budget_default,
        help="stop training after M minutes and keep the best checkpoint (held-out loss)"
        + (f" (default: {budget_default:g})" if budget_default else ""),
    )
    p.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help="measure the held-out loss every N steps and keep the adapter where it was lowest "
        "(default: four times over the training)",
    )
    p.add_argument(
        "--max-tokens", type=int, default=1024, help="tokens kept per example (default: 1024)"
    )
    p.add_argument(
        "--min-examples",
        type=int,
        default=50,
        metavar="N",
        help="refuse to train on fewer examples (default: 50)",
    )
    p.add_argument(
        "--focus",
        choices=("reply", "new-lines", "verdict"),
        help="what of a reply is learnt from: all of it, only its lines the prompt does not "
        "hold and the end of the turn, or its first token (a verifier's verdict word) "
        "(default: new-lines for a code writer, whose whole-file reply is nearly all copied "
        "lines; verdict for a scored reviewer, whose every reply is pass or fail; the whole "
        "reply for the others)",
    )
    p.add_argument("--seed", type=int, default=0)
    q = p.add_mutually_exclusive_group()
    q.add_argument("--qlora", dest="qlora", action="store_true", default=None, help="4-bit NF4")
    q.add_argument("--no-qlora", dest="qlora", action="store_false", help="full-precision base")
    c = p.add_mutually_exclusive_group()
    c.add_argument(
        "--gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_true",
        default=None,
        help="recompute activations in the backward pass: far less memory, about a third more "
        "time a step (default: when the step would not fit in the free memory otherwise)",
    )
    c.add_argument(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_false",
        help="keep every activation, whatever the memory",
    )


def learn_args(p: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """The learn loop's options (``prefix`` "learn-" for ``pantheon night``)."""
    if prefix:
        g = p.add_argument_group("the learn loop (--learn)")
        g.add_argument(
            "--learn-minutes",
            type=float,
            default=60.0,
            metavar="M",
            help="train each agent for M minutes at most (default: 60)",
        )
        g.add_argument(
            "--learn-agent",
            action="append",
            metavar="AGENT",
            help="only this agent learns (repeatable; default: every agent with the data)",
        )
        return
    _train_args(p, budget_default=60.0)
    p.add_argument("--agent", action="append", metavar="AGENT", help="only this agent (repeatable)")
    p.add_argument(
        "--heldout",
        type=float,
        default=0.2,
        metavar="SHARE",
        help="the share of tasks held out (default: 0.2)",
    )
    _judge_args(p)


def _judge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--significance",
        type=float,
        default=0.05,
        metavar="ALPHA",
        help="promote only when p is under this (default: 0.05)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="judge on at most N held-out jobs")
    p.add_argument(
        "--parallel", type=int, default=4, metavar="N", help="jobs judged at once (default: 4)"
    )
    p.add_argument(
        "--corpus",
        action="store_true",
        help="the shipped corpus too: a code writer is judged on the held-out side of its "
        "HumanEval mutants (problems never trained on) beside the night's held-out code jobs; "
        "`learn --corpus` also mines its labelled changes for the reviewers (traces mine "
        "--corpus)",
    )
