"""One night's settings: built once from the command line or a file, passed whole, the same for
``pantheon night`` and ``pantheon engine``."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from helpers import pantheon

from pantheon.console.cli import build_parser, main
from pantheon.console.commands.settings_args import FLAG_FIELDS, explicit_flags, night_settings
from pantheon.core.errors import ConfigError
from pantheon.core.model.files import TEST_MODEL
from pantheon.core.run.settings import (
    DEFAULT_CODE_MODEL,
    NightSettings,
    load_settings,
    write_night_settings,
)

ROOT = Path(__file__).resolve().parents[1]


def _settings(role: str, *argv: str) -> NightSettings:
    parser = build_parser()
    args = parser.parse_args([role, *argv])
    sub = next(a for a in parser._actions if a.dest == "command").choices[role]
    args.explicit = explicit_flags(sub, list(argv))
    return night_settings(args, role)


def test_the_command_line_builds_one_settings_object(tmp_path):
    night = _settings("night", "--demo", "--kappa-threshold", "0.4", "--until", "07:00")
    assert night.role == "night" and night.work.demo
    assert night.gates.kappa_threshold == 0.4 and night.gates.canary_every == 10
    assert night.drain.concurrency == "auto" and night.drain.until_empty
    assert night.drain.until is not None and night.drain.until.hour == 7
    assert night.models.code_model == DEFAULT_CODE_MODEL and night.serves
    # naming --model alone runs the writers on it too, as the help says
    one = _settings("night", "--demo", "--model", TEST_MODEL)
    assert one.models.model == TEST_MODEL and one.writers_model is None
    engine = _settings("engine", "--endpoint", "http://127.0.0.1:8101", "--lease", "30")
    assert engine.role == "engine" and not engine.serves and not engine.drain.until_empty
    assert engine.endpoint.url == "http://127.0.0.1:8101" and engine.drain.lease_s == 30
    assert not _settings("engine").models.serve  # the server `pantheon serve` runs
    assert _settings("engine", "--serve").serves


def test_a_settings_file_is_the_base_and_the_flags_given_win(tmp_path):
    path = tmp_path / "night.toml"
    path.write_text(
        '[models]\nmodel = "smollm2-135m"\n\n[gates]\nkappa_threshold = 0.3\ncanary_every = 4\n'
        "\n[drain]\nlease_s = 15\n"
    )
    settings = _settings("night", "--demo", "--settings", str(path), "--canary-every", "7")
    assert settings.models.model == "smollm2-135m" and settings.writers_model is None
    assert settings.gates.kappa_threshold == 0.3  # the file's: not given on the command line
    assert settings.gates.canary_every == 7  # given: it wins
    assert settings.drain.lease_s == 15


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[gates]\nkappa_treshold = 0.3\n", "gates.kappa_treshold: Extra inputs are not permitted"),
        ("[models]\nservers = 0\n", "models.servers: Input should be greater than or equal to 1"),
        ("[drain]\nconcurrency = 0\n", "drain.concurrency"),
        ("[gates\n", "is not valid TOML"),
    ],
)
def test_a_wrong_settings_file_is_refused_naming_the_file_and_the_field(tmp_path, text, says):
    path = tmp_path / "night.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in str(caught.value) and says in str(caught.value)
    out = pantheon("night", "--demo", "--settings", str(path), "--artifacts", str(tmp_path / "a"))
    assert out.returncode == 1 and says in out.stderr
    assert not (tmp_path / "a" / "pantheon.db").exists(), "nothing was prepared"


def test_a_missing_settings_file_is_one_clear_error(tmp_path):
    out = pantheon("engine", "--settings", str(tmp_path / "none.toml"))
    assert out.returncode == 1
    assert f"settings file {tmp_path / 'none.toml'}: No such file" in out.stderr


def test_the_night_s_settings_run_an_engine_the_same_way(tmp_path):
    """``ARTIFACTS/settings.json`` of a night, given to ``pantheon engine --settings`` (on
    another host, say): the same models, gates and draining; an engine's role."""
    artifacts = tmp_path / "a"
    night = _settings(
        "night", "--demo", "--model", TEST_MODEL, "--canary-every", "3",
        "--artifacts", str(artifacts),
    )  # fmt: skip
    artifacts.mkdir()
    path = write_night_settings(night)
    assert NightSettings.model_validate(load_settings(path)) == night
    out = pantheon("engine", "--settings", str(path), "--print-settings")
    assert out.returncode == 0, out.stderr
    engine = NightSettings.model_validate_json(out.stdout)
    assert engine.role == "engine"
    assert engine.model_copy(update={"role": "night"}) == night
    assert engine.serves and engine.drain.until_empty  # what the night does


def test_every_setting_flag_names_a_field_and_its_default_is_the_field_s():
    """The command line's defaults (and so its --help) say what the settings' defaults are."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    fresh = NightSettings().model_dump()
    for dest, place in FLAG_FIELDS.items():
        field = fresh
        for part in place:
            assert part in field, f"{dest} -> {'.'.join(place)} is not a setting"
            field = field[part]
        for role in ("night", "engine"):
            action = next((a for a in commands[role]._actions if a.dest == dest), None)
            if action is None or action.default in (None, False) or dest == "artifacts":
                continue
            default = tuple(action.default) if dest == "allow_host" else action.default
            assert default == field, f"{role} --{dest}: {action.default!r} against {field!r}"


def test_no_namespace_of_the_command_line_reaches_the_core():
    """Below console/ a function takes settings objects, never argparse's Namespace."""
    offenders = []
    for folder in ("core", "trainer"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    for arg in node.args.args + node.args.kwonlyargs:
                        if arg.annotation is not None and "Namespace" in ast.unparse(
                            arg.annotation
                        ):
                            offenders.append(f"{path.relative_to(ROOT)}:{node.name}({arg.arg})")
    assert offenders == []


def test_print_settings_prints_json_and_starts_nothing(tmp_path, capsys):
    artifacts = tmp_path / "a"
    assert main(["night", "--demo", "--artifacts", str(artifacts), "--print-settings"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["role"] == "night" and printed["work"]["demo"] is True
    assert not artifacts.exists()


@pytest.mark.slow
def test_an_engine_serves_its_model_as_a_night_does(tmp_path):
    """``pantheon engine --serve``: the night's embedded server, started, asked and stopped."""
    artifacts = str(tmp_path / "a")
    text = "text=" + " ".join(["the night describes each page that is long enough"] * 6)
    assert pantheon("enqueue", "docmeta", "--set", text, "--artifacts", artifacts).returncode == 0
    out = pantheon(
        "engine", "--serve", "--model", TEST_MODEL, "--until-empty", "--artifacts", artifacts,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"starting the embedded model server ({TEST_MODEL}, llama.cpp)" in out.stderr
    calls = [
        json.loads(line)
        for path in (tmp_path / "a" / "runs").glob("docmeta-*/describe/calls.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert calls and all(call["model"] for call in calls)
    assert not (tmp_path / "a" / "server" / "server.json").exists(), "the engine stops it"
