"""``pantheon night``: the whole loop. The night runs in its own process with the console in
front (it outlives the console), or headless in the foreground; :func:`run_night` in the core
does the serving and the draining, this module parses, prepares and prints."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from pantheon.console import learn_cli
from pantheon.console.commands.common import (
    artifacts_arg,
    gate_args,
    model_endpoint_args,
    progress_printer,
    quiet_logging_for_textual,
    sandbox_arg,
    speculative_arg,
)
from pantheon.console.commands.settings_args import check_night, night_settings, settings_args
from pantheon.core.run.assemble import check_servable
from pantheon.core.run.night import clear_closing, read_closing, run_night, write_closing
from pantheon.core.run.nightlock import NightRunning, night_holder
from pantheon.core.run.prepare import prepare_night
from pantheon.core.run.settings import DEFAULT_CODE_MODEL, NightSettings
from pantheon.core.store.layout import NIGHT_LOG

log = logging.getLogger("pantheon")


def add_night(sub: Any) -> None:
    p = sub.add_parser(
        "night",
        help="run a whole night: enqueue, drain, watch it in the console, report",
        description="Run a whole night: enqueue the work, start the model server and the engine, "
        "and open the console to watch it. The night runs in its own process (log: "
        "ARTIFACTS/night.log), so quitting the console or losing the SSH connection does not "
        "stop it: `pantheon console` attaches again. Without a terminal, or with --headless, "
        "the night runs in the foreground and prints where it stands at the end.",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="the demo night: prepares the demo repository (docs and code tasks) in ARTIFACTS",
    )
    p.add_argument(
        "--repo",
        metavar="PATH",
        help="run the night on your git repository instead: its docs pages without frontmatter "
        "and its failing tests",
    )
    p.add_argument("--docs", type=int, metavar="N", help="only the first N docs jobs")
    p.add_argument(
        "--code",
        type=int,
        metavar="N",
        help="only the first N code jobs (demo: 30, the hand-written tasks; up to 430 with the "
        "HumanEval bug-fix tasks)",
    )
    p.add_argument(
        "--docs-glob",
        default="docs/**/*.md",
        metavar="GLOB",
        help="--repo: the documentation pages (default: docs/**/*.md)",
    )
    p.add_argument(
        "--tasks",
        metavar="FILE.jsonl",
        type=Path,
        help="--repo: explicit code tasks (path, test, task a line) instead of running the tests",
    )
    p.add_argument(
        "--test-command",
        metavar="CMD",
        help="--repo: how the repository runs its tests (default: its pyproject.toml's "
        "[tool.pantheon] test, else python -m pytest)",
    )
    p.add_argument(
        "--remote",
        metavar="REMOTE",
        help="a shared git remote (a remote of the clone, or a URL) the jobs start from and "
        "merge into, pushed, again when another host pushed first: for engines on several "
        "hosts, each with its own clone",
    )
    p.add_argument("--no-docs", action="store_true", help="no docs jobs (only the code tasks)")
    p.add_argument(
        "--concurrency",
        type=concurrency_arg,
        metavar="C",
        help="jobs at once, or 'auto': start at 2 and double while the measured tokens/s pays, "
        "up to the server's slots, then hold (the console's +/- still wins; default: auto for "
        "--demo, else control.json's, 4)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="the model the embedded server runs (default: qwen2.5-coder-0.5b; "
        "smollm2-135m is faster and weaker)",
    )
    p.add_argument(
        "--code-model",
        default=None,
        metavar="M",
        help=f"the model of the writers (codegen's fixes, doc.frontmatter's pages), on a second "
        f"embedded server (default: {DEFAULT_CODE_MODEL}, or --model's when --model is given; "
        "'same' for --model's)",
    )
    model_endpoint_args(p)
    p.add_argument(
        "--servers",
        type=int,
        default=1,
        metavar="N",
        help="embedded servers of --model (default: 1); more than one share the CPU's cores and "
        "the night spreads its calls over them, each agent kept on one, a dead one's calls sent "
        "to the others",
    )
    p.add_argument(
        "--cpu-share",
        choices=("auto", "turns", "split"),
        default="auto",
        help="how the writers' server and the other one share this machine's CPU: each with "
        "every core, one computing at a time (turns), or each with half of them at once (split); "
        "auto (default): turns where half would be under 4 cores",
    )
    speculative_arg(p)
    gate_args(p)
    p.add_argument(
        "--reviewers-on",
        choices=("model", "code-model"),
        default="model",
        help="which server the reviewers ask: --model's (default) or the writers' --code-model",
    )
    p.add_argument(
        "--keep-server", action="store_true", help="leave the model server running afterwards"
    )
    p.add_argument(
        "--share-cpu",
        action="store_true",
        help="start even while another night serves its models on this host's CPU (by default "
        "this night waits for it to end: two at once starve each other)",
    )
    p.add_argument(
        "--until",
        metavar="HH:MM",
        help="be done by then (the next HH:MM, or an ISO date and time): no job starts that the "
        "time a job has taken so far says cannot finish by then; the jobs left stay queued",
    )
    p.add_argument(
        "--headless",
        action="store_true",
        help="no console: run the night in the foreground and print the figures at the end",
    )
    p.add_argument(
        "--learn",
        action="store_true",
        help="when the queue has drained and the servers stopped, run the learn loop: mine the "
        "night, train each agent with enough new green examples, judge it on held-out tasks "
        "and promote it when it wins (needs the train extra; see `pantheon learn --help`)",
    )
    learn_cli.learn_args(p, prefix="learn-")
    sandbox_arg(p)
    settings_args(p)
    artifacts_arg(p)


def concurrency_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'auto'") from None
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1 job at once")
    return value


def cmd_night(args: argparse.Namespace) -> int:
    settings = night_settings(args, "night")
    if args.print_settings:
        print(settings.as_json())
        return 0
    holder = night_holder(settings.artifacts)
    if holder is not None:  # before any test runs or job is queued
        raise NightRunning(settings.artifacts, holder)
    check_night(settings)
    settings = prepare_night(
        settings,
        say=lambda line: print(line, file=sys.stderr, flush=True),
        download=progress_printer(),
    )
    if settings.serves:  # a model the backend cannot serve is refused before the night starts
        check_servable(settings)
    if args.headless or not (sys.stdout.isatty() and sys.stdin.isatty()):
        if not args.headless:
            log.info("no terminal: the night runs headless (--headless says so explicitly)")
        return _night_run(args, settings)
    return _night_with_console(args, settings.artifacts)


def _night_with_console(args: argparse.Namespace, artifacts: Path) -> int:
    """The night in its own session (it outlives the console), the console in front."""
    from pantheon.console.app import PantheonConsole

    argv = [a for a in args.argv if a != "--headless"] + ["--headless"]
    log_path = artifacts / NIGHT_LOG
    start = log_path.stat().st_size if log_path.exists() else 0
    clear_closing(artifacts)
    with open(log_path, "ab") as out:
        night = subprocess.Popen(
            [sys.executable, "-m", "pantheon.console", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    quiet_logging_for_textual()
    PantheonConsole(artifacts, night=night, night_log=log_path).run()
    code = night.poll()
    if code is None:
        print(
            f"The night goes on in the background (pid {night.pid}; log {log_path}).\n"
            f"  pantheon console --artifacts {artifacts}   watch it again\n"
            f"  pantheon status --artifacts {artifacts}    where it stands\n"
            f"  pantheon stop --artifacts {artifacts}      stop it (its jobs in flight finish)"
        )
        return 0
    print(_night_closing(artifacts, log_path, start))
    return code


def _night_closing(artifacts: Path, log_path: Path, start: int = 0) -> str:
    """What the night said at its end: its closing figures, or the last lines of its log (from
    ``start``) when it stopped before it had them."""
    closing = read_closing(artifacts)
    if closing is not None:
        return closing
    try:
        with open(log_path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-20:])


def _night_run(args: argparse.Namespace, settings: NightSettings) -> int:
    """Serve the model, drain the queue, print the figures (in the foreground)."""
    result = run_night(settings)
    code = result.exit_code
    if result.figures is not None:
        print(result.figures)
    elif result.figures_problem is not None:
        if not code:
            raise result.figures_problem
        print(
            f"(the night's figures cannot be read now: {result.figures_problem.message})",
            file=sys.stderr,
        )
    print(result.wall_line)
    if args.learn and code == 0:
        code = night_learn(args, settings)
    return code


def night_learn(args: argparse.Namespace, settings: NightSettings) -> int:
    """The learn loop after a night: its lines go to the night's output (and log), and after
    its closing figures."""
    from pantheon.trainer.loop import learn
    from pantheon.trainer.train import TrainingError, TrainOptions, require_libraries

    said: list[str] = []

    def say(line: str, *, file: Any = None) -> None:
        print(line, file=file, flush=True)
        said.append(line)

    try:
        try:
            require_libraries()
        except TrainingError as exc:
            say(f"learn: {exc.message} ({exc.hint})", file=sys.stderr)
            return 1
        bar = learn_cli.progress_bar()
        say("learn: mining the night, then training what can learn")
        run = learn(
            settings.artifacts,
            agents=set(args.learn_agent or []) or None,
            options=TrainOptions(max_minutes=args.learn_minutes),
            corpus=settings.work.demo,
            on_line=lambda line: say(f"learn: {line}"),
            on_step=bar.step,
            on_task=bar.task,
        )
        return 1 if any(a.action == "failed" for a in run.agents) else 0
    finally:
        if said:
            closing = read_closing(settings.artifacts)
            try:
                write_closing(settings.artifacts, "\n".join(([closing] if closing else []) + said))
            except OSError as exc:
                log.warning("the learn loop's lines are not saved: %s", exc)
