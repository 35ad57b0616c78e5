"""The learn loop's commands: ``pantheon traces mine``, ``pantheon train``, ``pantheon promote``,
and ``pantheon learn`` (all of it, for every agent with enough new green examples).

torch, transformers and peft are imported only by the commands that train or judge, so mining
and the registry work on an install without the ``train`` extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from pantheon.console.format import age
from pantheon.core.errors import PantheonError
from pantheon.core.learn.files import (
    list_trainings,
    read_registry,
    read_state,
    training_root,
)

log = logging.getLogger("pantheon")

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
            the morning review's decisions. Each task is held out or not by a hash of its key
            (the file it works on), so no task is on both sides. Held-out jobs, green or not,
            are the tasks `pantheon promote` judges an adapter on
            (training/<agent>/tasks.jsonl)."""
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
            model beyond chance (McNemar's exact test, one-sided, p < --significance). The next
            model server started for the artifacts loads it, and the agent's calls use it."""
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
    p.add_argument("--seed", type=int, default=0)
    q = p.add_mutually_exclusive_group()
    q.add_argument("--qlora", dest="qlora", action="store_true", default=None, help="4-bit NF4")
    q.add_argument("--no-qlora", dest="qlora", action="store_false", help="full-precision base")


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
        help="judge a code writer on the held-out side of the shipped HumanEval corpus too "
        "(its problems never trained on), beside the night's held-out code jobs",
    )


# -- traces -------------------------------------------------------------------------------------


def cmd_traces(args: argparse.Namespace) -> int:
    from pantheon.trainer.mine import mine

    result = mine(args.artifacts, fraction=args.heldout, only=set(args.agent or []) or None)
    if args.json:
        print(
            json.dumps(
                {
                    "jobs": result.runs,
                    "skipped": dict(result.skipped),
                    "agents": {k: v.model_dump(mode="json") for k, v in result.agents.items()},
                },
                indent=2,
            )
        )
        return 0
    if not result.agents:
        print(f"{result.runs} job(s) in {args.artifacts}; no agent of theirs uses the model")
        return 0
    print(f"{result.runs} job(s) mined from {args.artifacts}")
    width = max(len(a) for a in result.agents)
    print(f"{'agent':<{width}}  examples  train  held-out  tasks  left out")
    for name, s in result.agents.items():
        why = ", ".join(f"{n} {k}" for k, n in sorted(s.left_out.items())) or "-"
        dup = f" ({s.duplicates} duplicate(s) dropped)" if s.duplicates else ""
        print(
            f"{name:<{width}}  {s.examples:8d}  {s.train:5d}  {s.heldout:8d}  {s.tasks:5d}  "
            f"{why}{dup}"
        )
    print(f"data sets in {training_root(args.artifacts)}/<agent>/data.jsonl")
    return 0


# -- train --------------------------------------------------------------------------------------


def _base_model(args: argparse.Namespace) -> Path:
    from pantheon.core.model.files import CATALOG, DEFAULT_MODEL, ModelStore
    from pantheon.core.model.server import ModelServer

    name = args.model
    if name is None:
        state = ModelServer(args.artifacts).state()
        if state is not None and Path(state.model_path).exists():
            return Path(state.model_path)
        name = DEFAULT_MODEL
    if name in CATALOG:
        return ModelStore().verified_path(name)
    path = Path(name).expanduser()
    if not path.is_file() or path.suffix != ".gguf":
        raise PantheonError(
            f"--model {name!r} is neither a model of `pantheon models` ({', '.join(CATALOG)}) "
            "nor a GGUF file"
        )
    return path.resolve()


class _Bar:
    """A one-line progress bar on a terminal; a line every tenth of the way otherwise."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = -1

    def step(self, row) -> None:
        pct = int(row.step * 100 / row.steps) if row.steps else 100
        if not self.tty and pct // 10 == self.last and row.step != row.steps:
            return
        self.last = pct // 10
        bar = "#" * (pct // 4) + "-" * (25 - pct // 4)
        eta = age(row.eta_s) if row.eta_s is not None else "?"
        line = (
            f"step {row.step}/{row.steps} [{bar}] {pct:3d}%  loss {row.loss:.4f}  "
            f"lr {row.lr:.2e}  {row.tokens:,} tokens  eta {eta}"
        )
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        if self.tty and row.step == row.steps:
            self.stream.write("\n")
        self.stream.flush()

    def task(self, result, done: int, total: int) -> None:
        mark = {(True, True): "both", (False, False): "neither"}.get(
            (result.base, result.adapter), "adapter only" if result.adapter else "base only"
        )
        line = f"judged {done}/{total}: {result.run}: {mark} passed"
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        if self.tty and done == total:
            self.stream.write("\n")
        self.stream.flush()


def _stop_after_step() -> threading.Event:
    """Ctrl-C or SIGTERM once: the event is set (the training finishes its step and keeps a
    checkpoint); twice: KeyboardInterrupt, at once."""
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after this step (again to stop at once)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def progress_bar(stream=None) -> _Bar:
    """The training and judging progress lines of the terminal (or of a log)."""
    return _Bar(stream)


def _options(args: argparse.Namespace):
    from pantheon.trainer.train import TrainOptions

    return TrainOptions(
        rank=args.rank,
        alpha=args.alpha,
        epochs=args.epochs,
        lr=args.lr,
        batch=args.batch,
        max_tokens=args.max_tokens,
        seed=args.seed,
        min_examples=args.min_examples,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        eval_every=args.eval_every,
        qlora=args.qlora,
    )


def _print_trainings(artifacts: Path) -> int:
    states = list_trainings(artifacts)
    if not states:
        print(f"no training in {training_root(artifacts)}")
        return 0
    for s in states:
        status = s.status if s.status != "running" or s.alive else "running? (its process is gone)"
        extra = ""
        if s.evaluation is not None:
            ev = s.evaluation
            extra = (
                f"; base {ev.base_passed}/{ev.tasks}, adapter {ev.adapter_passed}/{ev.tasks}, "
                f"p={ev.p_value:.3g}: {'promoted' if ev.promoted else 'not promoted'}"
            )
        print(f"{s.id}  {status}  step {s.step}/{s.steps}{extra}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pantheon.trainer import train as trainer

    if args.list:
        return _print_trainings(args.artifacts)
    if args.abandon:
        state = trainer.abandon(training_root(args.artifacts) / args.abandon)
        print(f"training {state.id} abandoned at step {state.step} of {state.steps}")
        return 0
    if args.resume:
        folder = training_root(args.artifacts) / args.resume
        if not (folder / "state.json").exists():
            raise PantheonError(f"no training {args.resume!r} in {training_root(args.artifacts)}")
        trainer.require_libraries()
    else:
        if not args.agent:
            raise PantheonError("name the agent to train (or --resume ID, --abandon ID, --list)")
        options = _options(args)
        trainer.check_data(args.artifacts, args.agent, options)
        trainer.require_libraries()
        folder = trainer.start(
            args.artifacts, args.agent, _base_model(args), options, promote=args.promote
        )
    state = read_state(folder)
    print(
        f"training {state.id}: {state.examples} examples ({state.heldout} held out), "
        f"base {Path(state.base_model).name}",
        flush=True,
    )
    bar = _Bar()
    stop = _stop_after_step()
    state = trainer.train(args.artifacts, folder, on_step=bar.step, stop=stop)
    before, after = state.heldout_loss_before, state.heldout_loss_after
    print(f"trained: adapter {args.artifacts / state.gguf}")
    if before is not None and after is not None:
        print(f"held-out loss {before:.4f} -> {after:.4f}")
    if state.promote or args.promote:
        print("judging it on the held-out jobs against the base model...", flush=True)
        return _judge(args, folder, bar)
    print(f"judge it with: pantheon promote {state.id} --artifacts {args.artifacts}")
    return 0


# -- promote ------------------------------------------------------------------------------------


def _judge(args: argparse.Namespace, folder: Path, bar: _Bar) -> int:
    from pantheon.trainer.loop import judge_and_promote

    def stop_now(signum, frame):
        raise KeyboardInterrupt  # the evaluation's model server is stopped on the way out

    signal.signal(signal.SIGTERM, stop_now)
    signal.signal(signal.SIGINT, stop_now)
    ev, promoted = judge_and_promote(
        args.artifacts,
        folder,
        alpha=args.significance,
        limit=args.limit,
        parallel=args.parallel,
        corpus=args.corpus,
        on_task=bar.task,
    )
    print(_evidence(ev))
    if promoted:
        print(f"promoted: {ev.adapter} is now {ev.agent}'s adapter ({ev.reason})")
    else:
        print(f"not promoted: {ev.reason}")
    return 0


def _evidence(ev) -> str:
    what = {"pass@1": "held-out code tasks (pass@1)", "labels": "held-out labelled changes"}.get(
        ev.judged_by, "held-out jobs"
    )
    return (
        f"{what}: base passed {ev.base_passed}/{ev.tasks}, adapter {ev.adapter_passed}/"
        f"{ev.tasks}; only the base {ev.b}, only the adapter {ev.c}; McNemar p = {ev.p_value:.4g}"
        + (f" ({ev.left_out} could not be judged)" if ev.left_out else "")
    )


def cmd_learn(args: argparse.Namespace) -> int:
    from pantheon.trainer import train as trainer
    from pantheon.trainer.loop import learn

    trainer.require_libraries()
    options = _options(args)
    bar = _Bar()
    stop = _stop_after_step()
    run = learn(
        args.artifacts,
        fraction=args.heldout,
        agents=set(args.agent or []) or None,
        options=options,
        alpha=args.significance,
        parallel=args.parallel,
        corpus=args.corpus,
        on_line=lambda line: print(line, flush=True),
        on_step=bar.step,
        on_task=bar.task,
        stop=stop,
    )
    failed = [a for a in run.agents if a.action == "failed"]
    return 1 if failed else 0


def cmd_promote(args: argparse.Namespace) -> int:
    from pantheon.trainer.evaluate import rollback

    if args.list:
        registry = read_registry(args.artifacts)
        if not registry.agents:
            print("no adapter promoted: every agent uses the base model")
        for agent, e in sorted(registry.agents.items()):
            ev = e.evidence
            print(
                f"{agent}: {e.adapter} (promoted {e.promoted_at:%Y-%m-%d %H:%M}; base "
                f"{ev.get('base_passed')}/{ev.get('tasks')}, adapter {ev.get('adapter_passed')}/"
                f"{ev.get('tasks')}, p={ev.get('p_value', float('nan')):.3g})"
                if e.promoted_at
                else f"{agent}: {e.adapter}"
            )
        return 0
    if args.rollback:
        now = rollback(args.artifacts, args.rollback)
        print(
            f"{args.rollback} now uses {now.adapter}"
            if now
            else f"{args.rollback} now uses the base model"
        )
        print("the next model server started for these artifacts serves it")
        return 0
    if not args.target:
        raise PantheonError("name an agent or a training (or --rollback AGENT, --list)")
    folder = training_root(args.artifacts) / args.target
    if not (folder / "state.json").exists():
        done = [s for s in list_trainings(args.artifacts, args.target) if s.status == "done"]
        if not done:
            raise PantheonError(
                f"{args.target!r} is neither a training nor an agent with a finished training",
                hint=f"pantheon train {args.target}",
            )
        folder = training_root(args.artifacts) / done[-1].id
    return _judge(args, folder, _Bar())
