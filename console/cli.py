"""The ``pantheon`` command line: the parser, and the commands, one module per group under
:mod:`pantheon.console.commands`.

Only the commands that draw import Textual, so ``pantheon engine`` starts light on a headless host.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from pantheon.console import learn_cli
from pantheon.console.commands import (
    console,
    docs,
    doctor,
    flows,
    models,
    night,
    queue,
    report,
    reviewers,
    serve,
    stop,
)
from pantheon.console.commands.common import artifacts_arg
from pantheon.console.commands.settings_args import explicit_flags
from pantheon.core import PantheonError

__all__ = ["COMMANDS", "build_parser", "main"]

EPILOG = """\
The artifacts directory (default ./artifacts) is where the engine, the console, the report and
the trainer meet: the queue (pantheon.db), the operator controls (control.json) and every run's
files (runs/<flow>-<run id>/).

examples:
  pantheon night --demo                       the demo night, start to finish
  pantheon flows check flows/*.yaml           check flow files before a night
  pantheon enqueue textstats --input '{"text": "hello world"}'
  pantheon enqueue textstats --inputs jobs.jsonl
  pantheon engine --until-empty               drain the queue headless, then stop
  pantheon control --concurrency 8            change c while the night runs
  pantheon status                             where the night stands
  pantheon stop                               stop the night (its jobs in flight finish)
  pantheon console                            watch and steer the night (attach any time)
  pantheon report                             the morning report: summary.json, report.html
  pantheon reviewers calibrate                measure the scored reviewers: AUROC, threshold
  pantheon docs                               where the documentation is
  pantheon traces mine                        the night's green work -> training data
  pantheon train doc.frontmatter --promote    train an adapter; promote it if it helps
"""

PARSERS: tuple[Callable[[Any], None], ...] = (
    night.add_night,
    queue.add_engine,
    queue.add_enqueue,
    console.add_console,
    report.add_report,
    report.add_status,
    flows.add_flows,
    flows.add_agents,
    queue.add_control,
    serve.add_serve,
    models.add_models,
    queue.add_retry,
    stop.add_stop,
    doctor.add_doctor,
    reviewers.add_reviewers,
    docs.add_docs,
)
"""Each command's parser, in the order ``pantheon --help`` lists them (the learn loop's last)."""

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "night": night.cmd_night,
    "engine": queue.cmd_engine,
    "enqueue": queue.cmd_enqueue,
    "status": report.cmd_status,
    "flows": flows.cmd_flows,
    "agents": flows.cmd_agents,
    "control": queue.cmd_control,
    "retry": queue.cmd_retry,
    "stop": stop.cmd_stop,
    "doctor": doctor.cmd_doctor,
    "reviewers": reviewers.cmd_reviewers,
    "docs": docs.cmd_docs,
    "console": console.cmd_console,
    "report": report.cmd_report,
    "serve": serve.cmd_serve,
    "models": models.cmd_models,
    "traces": learn_cli.cmd_traces,
    "train": learn_cli.cmd_train,
    "promote": learn_cli.cmd_promote,
    "learn": learn_cli.cmd_learn,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pantheon",
        allow_abbrev=False,
        description="Run fleets of small LLM agent flows overnight against a local model server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="say more (-vv for debug output)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    learn_cli.add_parsers(sub, artifacts_arg)
    # -v / -q work after the command too
    for command in sub.choices.values():
        command.allow_abbrev = False
        command.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        command.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.command:
        parser.print_help()
        return 2
    command = _subparser(parser, args.command)
    if command is not None and args.command in args.argv:
        after = args.argv[args.argv.index(args.command) + 1 :]
        args.explicit = explicit_flags(command, after)
    _setup_logging(args.verbose, args.quiet)
    try:
        return COMMANDS[args.command](args)
    except PantheonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
