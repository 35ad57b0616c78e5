"""The ``pantheon`` command as a user types it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest
from helpers import pantheon

from pantheon.console.cli import build_parser, main


def test_help_helps():
    out = pantheon("--help")
    assert out.returncode == 0
    for command in ("night", "engine", "enqueue", "status", "flows", "agents", "control"):
        assert command in out.stdout
    assert "examples:" in out.stdout
    parser = build_parser()
    actions = [a for a in parser._actions if a.dest == "command"]
    for name, sub in actions[0].choices.items():
        assert sub.format_help(), name


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: pantheon" in capsys.readouterr().out


@pytest.mark.slow
def test_a_small_demo_night_on_the_embedded_model(tmp_path):
    """2 docs and 1 code job on SmolLM2, in the demo repository, to the end."""
    artifacts = tmp_path / "night"
    out = pantheon(
        "night",
        "--demo",
        "--model",
        "smollm2-135m",
        "--docs",
        "2",
        "--code",
        "1",
        "--artifacts",
        str(artifacts),
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    assert "2 docs and 1 code job(s) queued" in out.stderr
    assert "pass rate  " in out.stdout and "wall time" in out.stdout
    repo = artifacts / "demo-repo"
    runs = sorted((artifacts / "runs").iterdir())
    assert len(runs) == 3
    branches = subprocess.run(
        ["git", "branch", "--list", "pantheon/*"], cwd=repo, capture_output=True, text=True
    ).stdout
    for run in runs:
        record = json.loads((run / "run.json").read_text())
        assert record["status"] in ("done", "failed"), run
        assert (run / "plan" / "output.json").exists()
        if record["status"] == "failed":
            assert (run / "FAILED.json").exists()
        flow, job = run.name.rsplit("-", 1)
        if (run / "write").exists() or (run / "code").exists():
            assert f"pantheon/{flow}/{int(job)}" in branches
        merge = run / "merge" / "output.json"
        if merge.exists() and json.loads(merge.read_text())["merged"]:
            merged = subprocess.run(
                ["git", "branch", "--merged", "main", f"pantheon/{flow}/{int(job)}"],
                cwd=repo,
                capture_output=True,
                text=True,
            ).stdout
            assert merged.strip(), f"{run.name} says merged but main does not hold it"
    assert not (artifacts / "server" / "server.json").exists(), "the night stops its server"
    settings = json.loads((artifacts / "settings.json").read_text())  # what it ran with
    assert settings["models"]["model"] == "smollm2-135m" and settings["work"]["docs"] == 2
    again = pantheon("night", "--demo", "--model", "smollm2-135m", "--artifacts", str(artifacts))
    assert again.returncode == 0 and "resuming the night" in again.stderr


def test_enqueue_then_engine_then_status(tmp_path):
    a = str(tmp_path / "a")
    out = pantheon("enqueue", "textstats", "--set", "text=one two three", "--artifacts", a)
    assert out.returncode == 0, out.stderr
    assert "enqueued 1 job(s) of flow 'textstats'" in out.stdout
    status = pantheon("status", "--artifacts", a)
    assert "queued 1" in status.stdout
    assert pantheon("engine", "--until-empty", "--artifacts", a).returncode == 0
    status = pantheon("status", "--json", "--artifacts", a)
    assert json.loads(status.stdout)["total"]["failed"] == 1  # three words < 40


def test_enqueue_refuses_inputs_that_do_not_fit_and_stores_nothing(tmp_path):
    a = tmp_path / "a"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"text": "fine"}\n{"title": "no text"}\n# comment\n\n{"text": 5}\n')
    out = pantheon("enqueue", "textstats", "--inputs", str(jobs), "--artifacts", str(a))
    assert out.returncode == 1
    assert "2 input(s) do not fit flow 'textstats'; nothing was enqueued" in out.stderr
    assert f"{jobs}:2:" in out.stderr and f"{jobs}:5:" in out.stderr
    if (a / "pantheon.db").exists():
        db = sqlite3.connect(a / "pantheon.db")
        try:
            assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
        finally:
            db.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "nosuchflow", "--set", "a=1"], "no flow named 'nosuchflow'"),
        (["enqueue", "textstats", "--input", "{bad json"], "--input is not valid JSON"),
        (["enqueue", "textstats"], "no input given"),
        (["status"], "there is no queue at"),
        (["retry"], "there is no queue at"),
    ],
)
def test_mistakes_get_one_clear_line(tmp_path, args, message):
    out = pantheon(*args, "--artifacts", str(tmp_path / "empty"))
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_flows_check_reports_problems_and_exit_code(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "name: g\ninput: {text: str}\nnodes:\n"
        "  - {id: s, agent: text.stats, inputs: {text: $input.text}}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nnodes:\n  - id: s\n    agent: text.statz\n")
    out = pantheon("flows", "check", str(good), str(bad))
    assert out.returncode == 1
    assert f"{good}: ok: flow 'g', 1 nodes: s(text.stats)" in out.stdout
    assert f"{bad}:4: node 's': unknown agent 'text.statz'" in out.stderr
    assert pantheon("flows", "check", str(good)).returncode == 0
    listed = pantheon("flows", "list")
    assert "textstats" in listed.stdout


def test_control_changes_and_prints_the_controls(tmp_path):
    a = str(tmp_path / "a")
    out = pantheon("control", "--concurrency", "7", "--pause-merges", "κ too low", "--artifacts", a)
    assert out.returncode == 0, out.stderr
    control = json.loads((tmp_path / "a" / "control.json").read_text())
    assert control["concurrency"] == 7
    assert control["merges_paused"] is True and control["merges_paused_reason"] == "κ too low"
    assert control["merges_paused_since"]
    out = pantheon("control", "--concurrency", "0", "--artifacts", a)
    assert out.returncode == 1 and "concurrency" in out.stderr
    assert json.loads(pantheon("control", "--artifacts", a).stdout)["concurrency"] == 7


def test_retry_puts_failed_jobs_back(tmp_path):
    a = str(tmp_path / "a")
    pantheon("enqueue", "textstats", "--set", "text=short", "--artifacts", a)
    pantheon("engine", "--until-empty", "--artifacts", a)
    out = pantheon("retry", "--artifacts", a)
    assert out.returncode == 0 and "1 failed job(s) back in the queue" in out.stdout
    status = json.loads(pantheon("status", "--json", "--artifacts", a).stdout)
    assert status["total"]["queued"] == 1
    missing = pantheon("retry", "999", "--artifacts", a)
    assert missing.returncode == 1 and "no job 999" in missing.stderr
    queued = pantheon("retry", "1", "--artifacts", a)
    assert queued.returncode == 1 and "nothing retried: job 1 is queued" in queued.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_read_only_artifacts_directory_is_a_clear_error(tmp_path):
    a = tmp_path / "ro"
    a.mkdir()
    a.chmod(0o500)
    try:
        out = pantheon("enqueue", "textstats", "--set", "text=x", "--artifacts", str(a))
    finally:
        a.chmod(0o700)
    assert out.returncode == 1
    assert "cannot write" in out.stderr


def test_an_artifacts_path_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = pantheon("engine", "--until-empty", "--artifacts", str(blocker / "artifacts"))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert str(blocker) in out.stderr


def test_an_unwritable_artifacts_directory_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """Read-only for real needs a non-root user; here the file system refuses every write."""
    import pantheon.core.store.atomic as atomic

    real_open = atomic.os.open

    def refuse(path, flags, *args):
        if flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    artifacts = tmp_path / "a"
    artifacts.mkdir()
    monkeypatch.setattr(atomic.os, "open", refuse)
    assert main(["control", "--concurrency", "3", "--artifacts", str(artifacts)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {artifacts / 'control.json'}: Permission denied" in err
    assert "hint: make" in err


def test_night_repo_mistakes_exit_non_zero_with_one_clear_line(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    empty = tmp_path / "empty-repo"
    empty.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=empty, check=True)
    cases = [
        (["--repo", str(tmp_path / "nope")], "does not exist"),
        (["--repo", str(plain)], "is not a git repository"),
        (["--repo", str(empty)], "nothing to do in"),
        (["--repo", str(empty), "--test-command", "nosuchtool"], "'nosuchtool' is not installed"),
    ]
    for args, message in cases:
        out = pantheon("night", *args, "--headless", "--artifacts", str(tmp_path / "a"))
        assert out.returncode == 1, (args, out.stderr)
        assert message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "a" / "server").exists(), "no server started for a bad input"


@pytest.mark.slow
def test_a_night_on_a_users_repository_finds_its_failing_tests_and_pages(tmp_path):
    """A small real project (not the demo): the night runs its tests once, makes one codefix job
    per failing test file and one docops job per page without frontmatter, and drains them on
    the real model server."""
    repo = tmp_path / "proj"
    (repo / "pkg").mkdir(parents=True)
    (repo / "docs" / "guide").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "mathx.py").write_text("def double(x):\n    return x + x + 1\n")
    (repo / "test_mathx.py").write_text(
        "from pkg.mathx import double\n\ndef test_double():\n    assert double(2) == 4\n"
    )
    (repo / "test_fine.py").write_text("def test_fine():\n    assert 1 + 1 == 2\n")
    (repo / "docs" / "guide" / "doubling.md").write_text(
        "# Doubling\n\n" + "The double function returns twice its argument. " * 8 + "\n"
    )
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True
        )
    artifacts = tmp_path / "night"
    out = pantheon(
        "night",
        "--repo",
        str(repo),
        "--model",
        "smollm2-135m",
        "--headless",
        "--artifacts",
        str(artifacts),
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    assert "1 failing test(s) in 1 file(s), 1 passing; 1 code job(s), placed on the code" in (
        out.stderr
    )
    assert "1 docs and 1 code job(s) queued" in out.stderr
    runs = {p.name.rsplit("-", 1)[0]: p for p in (artifacts / "runs").iterdir()}
    assert set(runs) == {"docops", "codefix"}
    record = json.loads((runs["codefix"] / "run.json").read_text())
    assert record["input"]["path"] == "pkg/mathx.py" and record["input"]["test"] == "test_mathx.py"
    assert record["input"]["suspects"][0]["name"] == "double"
    assert record["input"]["guard"] == []
    assert record["status"] in ("done", "failed")
    docs = json.loads((runs["docops"] / "run.json").read_text())
    assert docs["input"]["path"] == "docs/guide/doubling.md"
    assert not (artifacts / "server" / "server.json").exists()
