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
from pathlib import Path

from pantheon.console.learn_parser import TRAIN_EPILOG, add_parsers, learn_args
from pantheon.console.learn_progress import ProgressLines, progress_bar, stop_after_step
from pantheon.core.errors import PantheonError
from pantheon.core.learn.files import (
    list_trainings,
    read_registry,
    read_state,
    training_root,
)

__all__ = [
    "TRAIN_EPILOG",
    "add_parsers",
    "cmd_learn",
    "cmd_promote",
    "cmd_traces",
    "cmd_train",
    "learn_args",
    "progress_bar",
    "writers_hint",
]

log = logging.getLogger("pantheon")


# -- traces -------------------------------------------------------------------------------------


def cmd_traces(args: argparse.Namespace) -> int:
    from pantheon.trainer.mine import mine

    if args.corpus < 0:
        raise PantheonError(f"--corpus takes a number of problems (0 or more), not {args.corpus}")
    if args.corpus:
        print(
            f"building and testing the labelled changes and real fixes of {args.corpus} corpus "
            "problem(s) (a few minutes)"
        )
    result = mine(
        args.artifacts,
        fraction=args.heldout,
        only=set(args.agent or []) or None,
        corpus=args.corpus,
    )
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
        if s.corpus:
            dup += f" ({s.corpus} from the corpus)"
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
        focus=getattr(args, "focus", None),
        qlora=args.qlora,
        gradient_checkpointing=getattr(args, "gradient_checkpointing", None),
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
    bar = ProgressLines()
    stop = stop_after_step()
    state = trainer.train(args.artifacts, folder, on_step=bar.step, stop=stop)
    before, after = state.heldout_loss_before, state.heldout_loss_after
    print(f"trained: adapter {args.artifacts / state.gguf}")
    if before is not None and after is not None:
        print(f"held-out loss {before:.4f} -> {after:.4f}")
    memory = state.memory_text()
    took = f"{state.step} steps in {state.elapsed_s / 60:.1f} min"
    print(took + (f", {memory}" if memory else ""))
    if state.promote or args.promote:
        print("judging it on the held-out jobs against the base model...", flush=True)
        return _judge(args, folder, bar)
    print(f"judge it with: pantheon promote {state.id} --artifacts {args.artifacts}")
    return 0


# -- promote ------------------------------------------------------------------------------------


def _judge(args: argparse.Namespace, folder: Path, bar: ProgressLines) -> int:
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
        if (where := writers_hint(ev.agent, read_state(folder).base_model)) is not None:
            print(where)
    else:
        print(f"not promoted: {ev.reason}")
    return 0


def writers_hint(agent: str, base_model: str) -> str | None:
    """Where a night uses a writer's adapter trained on another model than the writers'
    default: a night asks its writers on the --code-model's server."""
    from pantheon.core.model.files import CATALOG, ModelStore
    from pantheon.core.run.assemble import WRITER_AGENTS
    from pantheon.core.run.settings import DEFAULT_CODE_MODEL

    if agent not in WRITER_AGENTS:
        return None
    trained_on = Path(base_model).resolve()
    if trained_on == ModelStore().path(DEFAULT_CODE_MODEL).resolve():
        return None
    name = next(
        (n for n in CATALOG if ModelStore().path(n).resolve() == trained_on), str(trained_on)
    )
    return (
        f"a night asks {agent} on its writers' model (--code-model; {DEFAULT_CODE_MODEL} "
        f"unless --model is given); this adapter is served where {agent} runs on {name}: "
        f"`pantheon night --code-model {name}`"
    )


def _evidence(ev) -> str:
    if ev.judged_by == "scores":
        return (
            f"held-out labelled changes scored: AUROC base {ev.base_auroc:.3f}, adapter "
            f"{ev.adapter_auroc:.3f} on {ev.tasks}; DeLong p = {ev.p_value:.4g}"
            + (f" ({ev.left_out} could not be judged)" if ev.left_out else "")
        )
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
    bar = ProgressLines()
    stop = stop_after_step()
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
    from pantheon.trainer.registry import rollback

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
    return _judge(args, folder, ProgressLines())
