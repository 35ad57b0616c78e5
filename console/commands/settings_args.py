"""From the command line to a night's settings: ``--settings FILE`` first, then every flag the
operator gave, into one :class:`~pantheon.core.run.settings.NightSettings`. Nothing below the
console sees the parsed arguments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from pantheon.core.errors import ConfigError
from pantheon.core.run.settings import NightSettings, load_settings, settings_error

__all__ = ["FLAG_FIELDS", "check_night", "explicit_flags", "night_settings", "settings_args"]

FLAG_FIELDS: dict[str, tuple[str, ...]] = {
    "artifacts": ("artifacts",),
    "join": ("join",),
    "queue": ("queue",),
    "model": ("models", "model"),
    "code_model": ("models", "code_model"),
    "serve": ("models", "serve"),
    "servers": ("models", "servers"),
    "speculative": ("models", "speculative"),
    "cpu_share": ("models", "cpu_share"),
    "reviewers_on": ("models", "reviewers_on"),
    "keep_server": ("models", "keep_server"),
    "share_cpu": ("models", "share_cpu"),
    "allow_host": ("endpoint", "allow_hosts"),
    "stall_s": ("endpoint", "stall_s"),
    "kappa_threshold": ("gates", "kappa_threshold"),
    "kappa_min_pairs": ("gates", "kappa_min_pairs"),
    "canary_every": ("gates", "canary_every"),
    "canary_min": ("gates", "canary_min"),
    "canary_max_miss": ("gates", "canary_max_miss"),
    "grounding_min": ("gates", "grounding_min"),
    "concurrency": ("drain", "concurrency"),
    "until_empty": ("drain", "until_empty"),
    "until": ("drain", "until"),
    "lease": ("drain", "lease_s"),
    "tick": ("drain", "tick_s"),
    "fsync": ("drain", "fsync"),
    "sample_every": ("drain", "metrics_every_s"),
    "metrics_port": ("drain", "metrics_port"),
    "demo": ("work", "demo"),
    "repo": ("work", "repo"),
    "docs": ("work", "docs"),
    "code": ("work", "code"),
    "no_docs": ("work", "no_docs"),
    "docs_glob": ("work", "docs_glob"),
    "tasks": ("work", "tasks"),
    "test_command": ("work", "test_command"),
    "remote": ("work", "remote"),
}
"""Each command-line option that is a setting, and its place in the settings. ``--endpoint``,
``--backend`` and ``--no-sandbox`` are translated by :func:`night_settings` itself."""

SERVED = ("llama.cpp", "openvino", "vllm")


def settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--queue",
        metavar="URL",
        help="the queue: a PostgreSQL URL that engines on several hosts share "
        "(postgresql://USER@HOST:PORT/DB), remembered in ARTIFACTS/queue.json; or sqlite, the "
        "artifacts' own file (the default)",
    )
    p.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help="start from the settings in FILE (TOML, or JSON such as a night's "
        "ARTIFACTS/settings.json); the options given here win over it",
    )
    p.add_argument(
        "--print-settings",
        action="store_true",
        help="print the settings this command would run with (JSON) and exit",
    )


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options ``argv`` gives (not those left at their defaults)."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given, _ = parser.parse_known_args(argv)
    except SystemExit:
        return set()
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given))


def _put(data: dict[str, Any], place: tuple[str, ...], value: Any) -> None:
    for part in place[:-1]:
        inner = data.get(part)
        data[part] = inner = dict(inner) if isinstance(inner, dict) else {}
        data = inner
    data[place[-1]] = value


def _has(data: dict[str, Any], place: tuple[str, ...]) -> bool:
    for part in place:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def night_settings(args: argparse.Namespace, role: Literal["night", "engine"]) -> NightSettings:
    """The settings of ``pantheon night`` or ``pantheon engine``: the file's, under the options
    given on the command line (``args.explicit``; every option when it is not known)."""
    data: dict[str, Any] = load_settings(args.settings) if getattr(args, "settings", None) else {}
    explicit: set[str] | None = getattr(args, "explicit", None)

    def given(dest: str) -> bool:
        if not hasattr(args, dest):
            return False
        return dest in explicit if explicit is not None else True

    for dest, place in FLAG_FIELDS.items():
        if given(dest) and (getattr(args, dest) is not None or explicit is not None):
            value = getattr(args, dest)
            if dest == "allow_host":
                value = list(value or [])
            _put(data, place, value)
    if given("endpoint") and args.endpoint:
        _put(data, ("endpoint", "url"), args.endpoint[0])
        _put(data, ("endpoint", "more"), list(args.endpoint[1:]))
    if given("backend") and args.backend:
        _put(data, ("endpoint", "backend"), args.backend)
        if args.backend in SERVED:
            _put(data, ("models", "backend"), args.backend)
    if given("no_sandbox") and args.no_sandbox:
        data["sandbox"] = False
    data["role"] = role
    if role == "engine":
        if not _has(data, ("models", "serve")):
            _put(data, ("models", "serve"), False)  # the one `pantheon serve` runs
        if not _has(data, ("drain", "until_empty")):
            _put(data, ("drain", "until_empty"), False)
    else:
        _put(data, ("drain", "until_empty"), True)
        demo = _has(data, ("work", "demo")) and data["work"]["demo"]
        own = not _has(data, ("endpoint", "url"))
        if demo and own and not _has(data, ("drain", "concurrency")):
            _put(data, ("drain", "concurrency"), "auto")  # the demo finds its own c
    where = f"settings file {args.settings} and the command line" if data else "the command line"
    try:
        return NightSettings.model_validate(data)
    except ValidationError as exc:
        raise settings_error(exc, where) from None


def check_night(settings: NightSettings) -> None:
    """What a night refuses before anything starts."""
    models = settings.models
    if models.servers > 1 and settings.endpoint.url:
        raise ConfigError(
            "--servers N starts N embedded servers (N ≥ 1); with --endpoint, name each server "
            "of yours with an --endpoint of its own"
        )
    if not settings.endpoint.url and settings.endpoint.backend == "llama-cpp-python":
        raise ConfigError(
            "--backend llama-cpp-python names the kind of server --endpoint is; a night serves "
            "llama.cpp, openvino or vllm itself"
        )
