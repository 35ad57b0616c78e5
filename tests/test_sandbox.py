"""The sandbox for model-written code, on real processes: bubblewrap confines the tests' writes to
the worktree, takes the network away and holds the CPU and memory limits; a missing bwrap is one
clear refusal, and ``--no-sandbox`` runs the code unconfined."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import codefix_model, codefix_night, git, make_repo

from pantheon.console.cli import main
from pantheon.core import JobQueue, enqueue, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.work.sandbox import (
    BWRAP_ENV,
    SANDBOX_ENV,
    Sandbox,
    SandboxError,
    code_jobs_pending,
    code_sandbox,
)
from pantheon.core.work.testcmd import check_runnable, resolve_test_command

STATUS = Sandbox.probe()
needs_bwrap = pytest.mark.skipif(not STATUS.active, reason=f"no sandbox here: {STATUS.reason}")
MISSING = "the sandbox for model-written code is missing"


@pytest.fixture
def confined(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default policy: model-written code runs in the sandbox or not at all (set, not
    deleted, so that what --no-sandbox sets in os.environ is undone after the test)."""
    monkeypatch.setenv(SANDBOX_ENV, "")
    monkeypatch.delenv(BWRAP_ENV, raising=False)


@pytest.fixture
def no_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine without bubblewrap: the lookup points at a binary that does not exist."""
    monkeypatch.setenv(SANDBOX_ENV, "")
    missing = tmp_path / "no-such-dir" / "bwrap"
    monkeypatch.setenv(BWRAP_ENV, str(missing))
    return missing


def worktree(repo: Path, name: str = "job") -> Path:
    """A git worktree of ``repo`` on a branch of its own, as a job gets (its ``.git`` is a file
    pointing into the repository's ``.git/worktrees/``)."""
    path = repo.parent / f"worktree-{name}"
    git(repo, "worktree", "add", "-q", "-b", f"pantheon/test/{name}", str(path))
    return path


@needs_bwrap
def test_a_sandboxed_test_run_cannot_write_outside_its_worktree(tmp_path, confined):
    outside = tmp_path / "outside.txt"
    repo = make_repo(
        tmp_path / "repo",
        {
            "test_writes.py": f"""\
            import tempfile
            from pathlib import Path

            def test_inside_the_worktree_and_the_private_tmp():
                Path("made-here.txt").write_text("ok")
                with tempfile.TemporaryDirectory() as tmp:
                    Path(tmp, "scratch.txt").write_text("ok")

            def test_outside_in_tmp():
                Path({str(outside)!r}).write_text("escaped")

            def test_into_the_repository_behind_the_worktree():
                Path({str(tmp_path / "repo" / "escaped.txt")!r}).write_text("escaped")
            """
        },
    )
    tree = worktree(repo)
    command = resolve_test_command(tree)
    assert command.sandbox is not None
    run = command.run(tree, "test_writes.py")
    assert not run.passed
    assert "2 failed, 1 passed" in run.output, run.output
    assert "Read-only file system" in run.output
    assert not outside.exists() and not (repo / "escaped.txt").exists()
    assert (tree / "made-here.txt").read_text() == "ok"
    # pytest's cache and Python's bytecode are not written into the worktree either
    assert not (tree / ".pytest_cache").exists()
    assert not list(tree.rglob("__pycache__"))
    # the same tests unconfined: the writes land (so the sandbox is what stopped them)
    loose = replace(command, sandbox=None).run(tree, "test_writes.py")
    assert "3 passed" in loose.output, loose.output
    assert outside.read_text() == "escaped"


@needs_bwrap
def test_a_sandboxed_test_run_has_no_network_not_even_the_hosts_loopback(tmp_path, confined):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append("connection")
            conn.sendall(b"hello")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        repo = make_repo(
            tmp_path / "repo",
            {
                "test_net.py": f"""\
                import socket

                def test_reach_a_server_on_the_host():
                    with socket.create_connection(("127.0.0.1", {port}), timeout=5) as s:
                        assert s.recv(5) == b"hello"
                """
            },
        )
        command = resolve_test_command(repo)
        run = command.run(repo, "test_net.py")
        assert not run.passed
        assert "ConnectionRefusedError" in run.output, run.output
        assert accepted == [], "nothing reached the server from the sandbox"
        loose = replace(command, sandbox=None).run(repo, "test_net.py")
        assert loose.passed, loose.output
        assert accepted == ["connection"], "unconfined, the same test reaches it"
    finally:
        server.close()
        thread.join(timeout=5)


CALC = """\
def add(a, b):
    return a - b
"""
CALC_TEST = """\
import os

from calc import add


def test_add():
    assert add(2, 3) == 5


def test_runs_confined():
    # only in the sandbox is the file system read-only, even for root
    assert not os.access("/", os.W_OK)
    assert os.path.basename(os.environ["TMPDIR"]).startswith("pantheon-sandbox-")
"""
FIXED_CALC = "```python\ndef add(a, b):\n    return a + b\n```"


def codefix(artifacts: Path, registry, repo: Path, llm) -> int:
    task = {"repo": str(repo), "path": "calc.py", "test": "test_calc.py", "task": "Fix add()."}
    [job] = codefix_night(artifacts, registry, [task], llm)
    return job


@needs_bwrap
def test_a_real_fix_passes_its_real_tests_in_the_sandbox_and_merges(
    tmp_path, artifacts, registry, confined
):
    repo = make_repo(tmp_path / "repo", {"calc.py": CALC, "test_calc.py": CALC_TEST})
    llm, http = codefix_model([FIXED_CALC], [True, True])
    job = codefix(artifacts, registry, repo, llm)
    asyncio.run(http.aclose())
    out = artifacts / "runs" / f"codefix-{job:06d}"
    [call] = [json.loads(x) for x in (out / "code" / "calls.jsonl").read_text().splitlines()]
    assert call["tests_passed"] is True, call["test_output"]
    test = json.loads((out / "test" / "output.json").read_text())
    assert test["passed"] is True, test
    assert "2 passed" in test["output"], "test_runs_confined passed: the gate ran confined"
    assert json.loads((out / "merge" / "output.json").read_text())["merged"] is True
    assert "a + b" in (repo / "calc.py").read_text(), "main holds the fix"


@needs_bwrap
def test_the_cpu_limit_kills_an_endless_loop_quickly(tmp_path, confined):
    repo = make_repo(
        tmp_path / "repo", {"test_spin.py": "def test_spin():\n    while True:\n        pass\n"}
    )
    command = resolve_test_command(repo)
    assert command.sandbox is not None
    quick = replace(command, sandbox=command.sandbox.with_limits(cpu_s=2))
    t0 = time.monotonic()
    run = quick.run(repo, "test_spin.py", timeout_s=120)
    took = time.monotonic() - t0
    assert not run.passed and not run.timed_out
    assert "killed by the sandbox's CPU time limit (2 s)" in run.output, run.output
    assert took < 20, f"the limit took {took:.1f} s to stop it"


@needs_bwrap
def test_the_memory_limit_holds_and_the_default_lets_big_libraries_load(tmp_path, confined):
    repo = make_repo(
        tmp_path / "repo",
        {
            "test_mem.py": """\
            import pytest

            def test_a_gibibyte():
                with pytest.raises(MemoryError):
                    bytearray(1 << 30)
            """,
            "test_numpy.py": """\
            import numpy

            def test_numpy():
                assert numpy.ones((512, 512)).sum() == 512 * 512
            """,
        },
    )
    command = resolve_test_command(repo)
    assert command.sandbox is not None
    small = replace(command, sandbox=command.sandbox.with_limits(memory_bytes=512 << 20))
    assert small.run(repo, "test_mem.py").passed
    # the default 4 GiB address space: NumPy and its BLAS threads load and run
    pytest.importorskip("numpy")
    run = command.run(repo, "test_numpy.py")
    assert run.passed, run.output


def test_a_missing_bwrap_is_one_clear_refusal_and_no_sandbox_runs_the_code(
    tmp_path, no_bwrap, monkeypatch
):
    status = Sandbox.probe()
    assert not status.active and status.binary is None
    assert f"bwrap is not installed: no {no_bwrap}" in status.reason
    repo = make_repo(tmp_path / "repo", {"test_ok.py": "def test_ok():\n    assert True\n"})
    with pytest.raises(SandboxError) as refused:
        resolve_test_command(repo)
    line = str(refused.value)
    assert line.startswith(MISSING) and "\n" not in line
    assert "`pantheon doctor --install` installs bubblewrap" in line
    assert "--no-sandbox runs code jobs unconfined" in line
    # an empty PATH finds no bwrap either
    with monkeypatch.context() as m:
        m.delenv(BWRAP_ENV)
        m.setenv("PATH", "")
        assert Sandbox.probe().reason == "bwrap is not installed: no `bwrap` on PATH"
    # the operator's choice: unconfined
    monkeypatch.setenv(SANDBOX_ENV, "off")
    command = resolve_test_command(repo)
    assert command.sandbox is None and code_sandbox() is None
    assert command.run(repo, "test_ok.py").passed


def test_a_bwrap_that_cannot_make_its_namespaces_says_so(tmp_path, monkeypatch):
    """A bwrap that is there but refused (a container without user namespaces answers so)."""
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "bubblewrap 0.8.0"; exit 0; fi\n'
        'echo "bwrap: No permissions to creating new namespace" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    monkeypatch.delenv(SANDBOX_ENV, raising=False)
    monkeypatch.setenv(BWRAP_ENV, str(fake))
    status = Sandbox.probe()
    assert not status.active and status.binary == str(fake)
    assert "cannot set up its namespaces here: No permissions to creating new namespace" in (
        status.reason
    )
    with pytest.raises(SandboxError, match=r"does not work here .* --no-sandbox"):
        code_sandbox()


@needs_bwrap
def test_the_probe_runs_once_and_check_runnable_starts_the_interpreter_confined(tmp_path, confined):
    assert Sandbox.probe() is Sandbox.probe(), "cached per binary"
    assert STATUS.reason.startswith("bubblewrap ") and "no network" in STATUS.reason
    repo = make_repo(tmp_path / "repo", {"test_ok.py": "def test_ok():\n    assert True\n"})
    command = resolve_test_command(repo)
    check_runnable(command, repo)
    # the limits ride on every process: prlimit's, or setrlimit's in the child
    for sandbox in (command.sandbox, replace(command.sandbox, prlimit=None)):
        done = sandbox.run(["sh", "-c", "ulimit -t; ulimit -v"], cwd=repo)
        assert done.stdout.split() == ["120", str(4 << 20)], done


def test_the_engine_refuses_code_jobs_without_the_sandbox_unless_told(
    tmp_path, artifacts, registry, no_bwrap, monkeypatch
):
    repo = make_repo(tmp_path / "repo", {"calc.py": CALC, "test_calc.py": CALC_TEST})
    llm, http = codefix_model([FIXED_CALC], [True, True])
    # the engine refuses up front: nothing claimed, nothing asked of the model
    with pytest.raises(SandboxError, match=re.escape(MISSING)):
        codefix(artifacts, registry, repo, llm)
    with JobQueue(artifacts) as q:
        assert [j.status for j in q.jobs()] == ["queued"]
    # a code job that reaches a node all the same (queued after the engine's start) fails there
    import pantheon.core.run.engine as engine_module

    monkeypatch.setattr(engine_module, "code_jobs_pending", lambda queue: 0)
    job = codefix(artifacts, registry, repo, llm)
    out = artifacts / "runs" / f"codefix-{job:06d}"
    failed = json.loads((out / "FAILED.json").read_text())
    assert failed["node"] == "code" and failed["error"].startswith(MISSING), failed
    assert llm.seen == [], "no model call for code that could not run confined"
    assert "a - b" in (repo / "calc.py").read_text()
    # --no-sandbox (PANTHEON_SANDBOX=off): the same job runs, unconfined; the test that checks
    # for the sandbox is the one that fails now
    monkeypatch.setenv(SANDBOX_ENV, "off")
    job = codefix(artifacts, registry, repo, llm)
    asyncio.run(http.aclose())
    out = artifacts / "runs" / f"codefix-{job:06d}"
    call = json.loads((out / "code" / "calls.jsonl").read_text().splitlines()[0])
    assert call["seed"] == 0 and "1 failed, 1 passed" in call["test_output"], call["test_output"]
    assert "assert not os.access" in call["test_output"]


def test_a_night_with_code_jobs_refuses_to_start_without_the_sandbox(tmp_path, no_bwrap, capsys):
    artifacts = tmp_path / "night"
    code = main(["night", "--demo", "--headless", "--artifacts", str(artifacts)])
    err = capsys.readouterr().err
    assert code == 1
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: {MISSING} (bwrap is not installed")
    assert "`pantheon doctor --install` installs bubblewrap" in line
    assert not (artifacts / "demo-repo").exists() and not (artifacts / "server").exists()


def test_the_engine_command_refuses_queued_code_jobs_and_no_sandbox_lets_them_run(
    tmp_path, registry, no_bwrap, capsys
):
    artifacts = tmp_path / "a"
    repo = make_repo(tmp_path / "repo", {"calc.py": CALC, "test_calc.py": CALC_TEST})
    flow = load_flow(packaged_flows_dir() / "codefix.yaml", registry)
    task = {"repo": str(repo), "path": "calc.py", "test": "test_calc.py", "task": "Fix add()."}
    with JobQueue(artifacts) as q:
        [job] = enqueue(q, flow, [task])
        assert code_jobs_pending(q) == 1
    argv = ["engine", "--until-empty", "--artifacts", str(artifacts)]
    assert main(argv) == 1
    assert capsys.readouterr().err.startswith(f"error: {MISSING}")
    with JobQueue(artifacts) as q:
        assert q.get(job).status == "queued", "refused before claiming anything"
    assert main([*argv, "--no-sandbox"]) == 0
    with JobQueue(artifacts) as q:
        ran = q.get(job)
    # no model server here: codegen fails for that, not for the sandbox
    assert ran.status == "failed" and "sandbox" not in (ran.error or ""), ran.error


def doctor_lines(out: str) -> dict[str, tuple[str, str]]:
    lines = {}
    for line in out.splitlines():
        level, rest = line.split(" ", 1)
        if level in ("ok", "warn", "FAIL"):
            name = rest.strip()
            for known in ("model server", "models", "sandbox", "git", "disk"):
                if name.startswith(known):
                    lines[known] = (level, name[len(known) :].strip())
    return lines


def test_doctor_prints_one_line_per_check_and_fails_on_what_the_night_needs(
    tmp_path, no_bwrap, capsys, monkeypatch
):
    code = main(["doctor", "--artifacts", str(tmp_path / "artifacts")])
    out = capsys.readouterr().out
    checks = doctor_lines(out)
    assert set(checks) == {"model server", "models", "sandbox", "git", "disk"}, out
    assert checks["sandbox"][0] == "FAIL" and MISSING in checks["sandbox"][1]
    assert checks["git"][0] == "ok" and "git version" in checks["git"][1]
    assert "GiB free at " in checks["disk"][1]
    assert code == 1 and "check(s) the night needs failed: " in out and "sandbox" in out
    # --install where PANTHEON_BWRAP names the binary: it says so and installs nothing
    assert main(["doctor", "--install", "--artifacts", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{BWRAP_ENV}={no_bwrap} names the bwrap to use" in out and "+ apt-get" not in out
    # unconfined by choice: the sandbox is a warning, not a failure
    monkeypatch.setenv(SANDBOX_ENV, "off")
    main(["doctor", "--artifacts", str(tmp_path)])
    assert doctor_lines(capsys.readouterr().out)["sandbox"][0] == "warn"


@needs_bwrap
def test_doctor_with_the_sandbox_active(tmp_path, confined, capsys):
    code = main(["doctor", "--install", "--artifacts", str(tmp_path)])
    out = capsys.readouterr().out
    assert "bubblewrap works here already" in out and "+ apt-get" not in out
    checks = doctor_lines(out)
    assert checks["sandbox"] == ("ok", STATUS.reason)
    failing = [name for name, (level, _) in checks.items() if level == "FAIL"]
    assert code == (1 if failing else 0), out


def test_only_flows_that_run_code_count_as_code_jobs(tmp_path, registry, artifacts):
    docs = load_flow(packaged_flows_dir() / "docops.yaml", registry)
    code = load_flow(packaged_flows_dir() / "codefix.yaml", registry)
    task = {"repo": str(tmp_path), "path": "a.py", "test": "test_a.py", "task": "Fix a."}
    with JobQueue(artifacts) as q:
        enqueue(q, docs, [{"repo": str(tmp_path), "path": "docs/a.md"}])
        assert code_jobs_pending(q) == 0
        enqueue(q, code, [task, task])
        assert code_jobs_pending(q) == 2
