"""The command line reference, written from the real parsers so it cannot drift from them.

``python -m pantheon.console.cli_reference > docs/reference/cli.md`` writes the page the
documentation site serves; a test fails when a parser changes and the page does not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

__all__ = ["cli_reference"]

HEADER = """\
# Command line reference

Every command of `pantheon`, with each option as `pantheon COMMAND --help` gives it. This page
is written from the command line's own parsers
(`python -m pantheon.console.cli_reference > docs/reference/cli.md`), and a test fails when the
two differ.

Every command takes `--artifacts DIR` (the artifacts directory, default `./artifacts`), `-v`
(say more; `-vv` for debug output) and `-q` (only warnings and errors).
"""


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{names}`"
    meta = action.metavar or action.dest.upper()
    if isinstance(meta, tuple):
        meta = " ".join(meta)
    if action.choices and not action.metavar:
        meta = "{" + ",".join(str(c) for c in action.choices) + "}"
    if action.nargs in ("+", "*"):
        meta = f"{meta} ..."
    elif action.nargs == "?":
        meta = f"[{meta}]"
    return f"`{names} {meta}`"


def _help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = action.help or ""
    if "%(" in text:
        params = {**vars(action), "prog": parser.prog}
        if params.get("choices") is not None:
            params["choices"] = ", ".join(str(c) for c in params["choices"])
        text = text % params
    return _cell(text)


def _section(name: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    out = [f"{'#' * level} `{name}`", ""]
    if parser.description:
        out += [_cell(parser.description.split("\n\n", 1)[0]), ""]
    usage = parser.format_usage().removeprefix("usage: ").strip()
    out += ["```", " ".join(usage.split()), "```", ""]
    rows = [
        a
        for a in parser._actions
        if a.help != argparse.SUPPRESS
        and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and "--artifacts" not in a.option_strings
    ]
    if rows:
        out += ["| argument | what it does |", "| --- | --- |"]
        out += [f"| {_flags(a)} | {_help(a, parser)} |" for a in rows]
        out.append("")
    for sub_name, sub in _subcommands(parser):
        out += _section(f"{name} {sub_name}", sub, level + 1)
    return out


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown page: one section per command (and per sub-command), in ``--help``'s order."""
    if parser is None:
        from pantheon.console.cli import build_parser

        parser = build_parser()
    lines = [HEADER]
    for name, sub in _subcommands(parser):
        lines += _section(f"pantheon {name}", sub, 2)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(cli_reference())
