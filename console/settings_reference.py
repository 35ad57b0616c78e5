"""The settings reference, written from the settings' own models so it cannot drift from them.

``python -m pantheon.console.settings_reference > docs/reference/settings.md`` writes the page;
a test fails when a setting changes and the page does not.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from pantheon.console.commands.settings_args import FLAG_FIELDS
from pantheon.core.run.settings import NightSettings

__all__ = ["settings_reference"]

HEADER = """\
# Settings reference

A night's settings are one object, `NightSettings`, built once and passed whole: from the
command line, from a file (`--settings FILE`, TOML or JSON), or both — the options given on the
command line win over the file. `pantheon night` and `pantheon engine` build the engine from it
in the same function, so an engine on another host started with a night's own
`ARTIFACTS/settings.json` runs what that night runs:

```console
$ pantheon night --demo --print-settings > night.json     # what a night would run with
$ pantheon engine --settings artifacts/settings.json      # the night's own, on another host
```

A settings file names only what it changes; a wrong name, value or type is refused before
anything starts, with the file and the field (`settings file night.toml: gates.kappa_treshold:
Extra inputs are not permitted`). For example:

```toml
[models]
model = "qwen2.5-coder-0.5b"
code_model = "qwen2.5-coder-1.5b"

[gates]
kappa_threshold = 0.6
canary_every = 10

[drain]
concurrency = "auto"
until = "07:00"
```

This page is written from the models themselves
(`python -m pantheon.console.settings_reference > docs/reference/settings.md`), and a test fails
when the two differ.
"""

SECTIONS = {
    "": "The night as a whole.",
    "models": "The models a night serves, and how its servers share the machine.",
    "endpoint": "A model server of the operator's; with `url`, nothing is served here.",
    "gates": "The reviewers' audits: κ and the canaries, and when they pause merges.",
    "drain": "How the engine drains the queue.",
    "work": "What a night prepares before it drains (a night only).",
}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|").replace("``", "`")


def _type(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "")
    text = text.replace("datetime.datetime", "datetime").replace("<class '", "").replace("'>", "")
    return _cell(text)


def _flags() -> dict[tuple[str, ...], str]:
    flags = {place: "--" + dest.replace("_", "-") for dest, place in FLAG_FIELDS.items()}
    flags[("endpoint", "url")] = "--endpoint"
    flags[("endpoint", "more")] = "--endpoint (again)"
    flags[("endpoint", "backend")] = "--backend"
    flags[("models", "backend")] = "--backend"
    flags[("sandbox",)] = "--no-sandbox"
    return flags


def _rows(model: type[BaseModel], prefix: tuple[str, ...], defaults: dict[str, Any]) -> list[str]:
    flags = _flags()
    rows = ["| setting | type | default | option | what |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if isinstance(defaults.get(name), dict):
            continue
        place = (*prefix, name)
        default = json.dumps(defaults.get(name), ensure_ascii=False)
        flag = flags.get(place)
        rows.append(
            f"| `{name}` | {_type(field.annotation)} | `{default}` | "
            f"{f'`{flag}`' if flag else ''} | {_cell(field.description or '')} |"
        )
    return rows


def settings_reference() -> str:
    defaults = NightSettings().model_dump(mode="json")
    lines = [HEADER]
    lines += ["## The night", "", SECTIONS[""], ""]
    lines += _rows(NightSettings, (), defaults)
    for name, field in NightSettings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        lines += ["", f"## `[{name}]`", "", SECTIONS.get(name, model.__doc__ or ""), ""]
        lines += _rows(model, (name,), defaults[name])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(settings_reference())
