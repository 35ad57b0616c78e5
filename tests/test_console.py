"""The console, driven with Pilot the way an operator drives it: keys in, widgets and files out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from night_fixture import NOW, add_servers_sample
from rich.console import Console
from textual.widgets import OptionList, Static, TabbedContent

from pantheon.console.app import PantheonConsole
from pantheon.console.screens.dialogs import ConfirmScreen, HelpScreen
from pantheon.console.screens.run_detail import RunDetailScreen
from pantheon.core.store.control import ControlFile
from pantheon.widgets.control_banner import ControlBanner
from pantheon.widgets.json_view import JsonView
from pantheon.widgets.metric_tile import MetricTile
from pantheon.widgets.runs_table import RunsTable

SIZE = (100, 30)


def console(artifacts: Path) -> PantheonConsole:
    return PantheonConsole(artifacts, watch=False, clock=lambda: NOW)


def rows(app: PantheonConsole) -> list[list[str]]:
    table = app.screen.query_one(RunsTable)
    if not table.display:
        return []
    return [list(row.cells()) for row in table.rows]


def text_of(app: PantheonConsole, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def control(artifacts: Path):
    return ControlFile(artifacts).load_strict()


async def test_the_dashboard_shows_the_night(night):
    app = console(night)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        summary = text_of(app, "#summary")
        assert "19 jobs · 5 queued · 2 running · 9 done · 3 failed" in summary
        assert "engine: live" in summary
        table = rows(app)
        assert len(table) == 19
        # running first, then the latest finished, then the queue in the order it drains
        assert [r[2] for r in table[:3]] == ["running", "running", "failed"]
        assert table[0][3] == "▶ stats (text.stats)"  # from its run folder
        assert table[1][3] == "▶ between nodes"  # claimed, no node started yet
        assert table[0][4] == "8m30s"  # running since BASE + 390
        assert [r[0] for r in table[-5:]] == ["15", "16", "17", "18", "19"]
        failed = next(r for r in table if r[2] == "failed")
        assert "only 12 words, fewer than 40" in failed[5]
        kappa = app.screen.query_one("#tile-kappa", MetricTile)
        assert kappa.value == "0.51" and kappa.detail == "49 pairs"
        assert kappa.level == "bad"  # under 0.6
        canary = app.screen.query_one("#tile-canary", MetricTile)
        assert (canary.value, canary.detail, canary.level) == ("2/4", "caught", "warn")
        rho = app.screen.query_one("#tile-rho", MetricTile)
        assert rho.value == "0.86" and rho.level == "warn"  # over 0.8
        assert len(rho.history) == 40
        assert not app.screen.query_one(ControlBanner).display


async def test_filters_narrow_the_table(night):
    app = console(night)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("slash", *"status:failed", "enter")
        assert [r[2] for r in rows(app)] == ["failed"] * 3
        await pilot.press("escape")
        assert len(rows(app)) == 19
        await pilot.press("s")  # all -> running
        assert [r[0] for r in rows(app)] == ["13", "14"]
        await pilot.press("s")  # -> failed
        assert {r[2] for r in rows(app)} == {"failed"}
        await pilot.press("slash", *" agent:check", "enter")
        assert len(rows(app)) == 3
        await pilot.press("escape", "slash", *"agent:text.stats", "enter")
        assert [r[0] for r in rows(app)] == ["13"]  # the node it runs now
        await pilot.press("slash", "ctrl+u", *"nothing-matches", "enter")
        assert rows(app) == []
        assert "No run matches" in text_of(app, "#empty")


async def test_enter_opens_a_failed_run_on_its_failure(night):
    app = console(night)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("s", "s")  # failed runs
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, RunDetailScreen)
        head = text_of(app, "#run-head")
        assert "textstats-000012  failed" in head
        assert "FAILED at check (check.min_words)" in head
        assert app.screen.query_one(TabbedContent).active == "error"
        nodes = app.screen.query_one("#nodes", OptionList)
        labels = [str(nodes.get_option_at_index(i).prompt) for i in range(nodes.option_count)]
        assert labels == [
            "✓ normalize  text.normalize",
            "✓ stats  text.stats",
            "✗ check  check.min_words",
        ]
        assert str(nodes.get_option_at_index(nodes.highlighted).prompt).startswith("✗ check")
        await pilot.press("o")
        assert app.screen.query_one(TabbedContent).active == "output"
        await pilot.press("up")  # the stats node: its output is the word counts
        await pilot.pause()
        assert '"words": 12' in app.screen.query_one("#view-output", JsonView).plain
        await pilot.press("c")
        assert "no model calls" in app.screen.query_one("#view-calls", JsonView).plain
        await pilot.press("escape")
        assert not isinstance(app.screen, RunDetailScreen)


async def test_a_run_that_has_not_started_says_so(night):
    app = console(night)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("down", "enter")  # the second row: a running job with no folder yet
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "has not started" in text_of(app, "#run-head")


async def test_pausing_merges_asks_then_writes_control_and_shows_it(night):
    app = console(night)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("m")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert not control(night).merges_paused
        await pilot.press("m", "y")
        await pilot.pause()
        c = control(night)
        assert c.merges_paused and c.updated_by == "console"
        banner = app.screen.query_one(ControlBanner)
        assert banner.display
        assert "MERGES PAUSED" in str(banner.render())
        await pilot.press("m", "y")
        await pilot.pause()
        assert not control(night).merges_paused
        assert not banner.display


async def test_the_queue_pauses_with_confirmation_and_resumes_without(night):
    app = console(night)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("p")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause()
        assert control(night).queue_paused
        assert "QUEUE PAUSED" in str(app.screen.query_one(ControlBanner).render())
        await pilot.press("p")
        await pilot.pause()
        assert not control(night).queue_paused


async def test_concurrency_goes_up_and_down_but_not_under_one(night):
    app = console(night)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        start = control(night).concurrency
        await pilot.press("plus", "plus")
        await pilot.pause()
        assert control(night).concurrency == start + 2
        assert app.screen.query_one("#tile-running", MetricTile).detail.startswith(f"c={start + 2}")
        await pilot.press(*["minus"] * (start + 5))
        await pilot.pause()
        assert control(night).concurrency == 1


async def test_the_command_palette_holds_the_controls(night):
    app = console(night)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+p", *"pause merges")
        await pilot.pause()
        await app.workers.wait_for_complete()  # the palette's search for what was typed
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause()
        assert control(night).merges_paused


async def test_help_opens_and_closes(night):
    app = console(night)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_a_missing_artifacts_directory_gets_an_empty_state_and_no_writes(tmp_path):
    missing = tmp_path / "nowhere"
    app = console(missing)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "No night here yet" in text_of(app, "#empty")
        assert "pantheon night --demo" in text_of(app, "#empty")
        await pilot.press("plus")
        await pilot.pause()
        assert not missing.exists()
        await pilot.press("question_mark")  # keys reach the bindings, not a hidden filter box
        assert isinstance(app.screen, HelpScreen)


async def test_corrupt_files_show_as_problems_never_a_crash(night):
    (night / "control.json").write_text("{not json")
    run = night / "runs" / "textstats-000004"
    (run / "run.json").write_text('{"run_id": "000004", "trunc')
    (run / "stats" / "calls.jsonl").write_text('{"model": "m", "raw": "{}"}\nGARBAGE\n')
    with open(night / "metrics" / "engine.jsonl", "a") as fh:
        fh.write("{torn line\n")
    app = console(night)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        banner = app.screen.query_one(ControlBanner)
        assert banner.display and "control.json" in str(banner.render())
        app.refresh_night()  # the watcher would report the changed runs; ask for all of them
        await pilot.pause()
        await pilot.press("slash", *"status:unreadable", "enter")
        assert [r[0] for r in rows(app)] == ["4"]
        assert "not valid JSON" in rows(app)[0][5] or "run.json" in rows(app)[0][5]
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "unreadable" in text_of(app, "#run-head")
        # without run.json the nodes come from the folders, in name order: check, normalize, stats
        await pilot.press("down", "down", "c")
        await pilot.pause()
        assert "line 2 is not JSON" in app.screen.query_one("#view-calls", JsonView).plain


async def test_the_console_follows_the_night_through_the_watcher(night):
    app = PantheonConsole(night, clock=lambda: NOW, debounce_ms=100)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            if app.snapshot is not None:
                break
        ControlFile(night).update(by="operator", merges_paused=True, merges_paused_reason="κ low")
        banner = app.screen.query_one(ControlBanner)
        for _ in range(100):
            await pilot.pause(0.05)
            if banner.display:
                break
        assert "MERGES PAUSED — κ low" in str(banner.render())
        with open(night / "metrics" / "engine.jsonl", "a") as fh:
            fh.write(json.dumps({"ts": NOW, "depth": 3, "rho": 0.2, "kappa": 0.95}) + "\n")
        tile = app.screen.query_one("#tile-kappa", MetricTile)
        for _ in range(100):
            await pilot.pause(0.05)
            if tile.value == "0.95":
                break
        assert tile.value == "0.95" and tile.level == ""


async def _until(pilot, predicate, timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError("timed out waiting for the console")


def _done(app: PantheonConsole) -> int:
    snap = app.snapshot
    return 0 if snap is None else sum(j.status == "done" for j in snap.jobs.values())


@pytest.mark.slow
async def test_attach_detach_reattach_while_a_real_engine_runs(
    tmp_path, artifacts, with_plugin, monkeypatch
):
    from helpers import pantheon, pantheon_popen, step_flow

    count_file = tmp_path / "executions.log"
    monkeypatch.setenv("PANTHEON_COUNT_FILE", str(count_file))
    flow = tmp_path / "steps.yaml"
    flow.write_text(step_flow(0.15))
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(30)))
    enq = pantheon("enqueue", str(flow), "--inputs", str(inputs), "--artifacts", str(artifacts))
    assert enq.returncode == 0, enq.stderr
    engine = pantheon_popen(
        "engine", "--until-empty", "--concurrency", "2", "--artifacts", str(artifacts)
    )
    try:
        first = PantheonConsole(artifacts, debounce_ms=100)
        async with first.run_test(size=SIZE) as pilot:
            await _until(pilot, lambda: _done(first) >= 2)
            seen = _done(first)
            await _until(pilot, lambda: _done(first) > seen)  # live, not a one-off read
            assert "running" in text_of(first, "#summary")
            await pilot.press("q")
        left_at = _done(first)
        assert engine.poll() is None, "the night goes on without a console"

        again = PantheonConsole(artifacts, debounce_ms=100)
        async with again.run_test(size=SIZE) as pilot:
            await _until(pilot, lambda: _done(again) >= left_at)
            assert len(rows(again)) == 30
            await _until(pilot, lambda: _done(again) == 30, timeout=120)
            assert "30 done" in text_of(again, "#summary")
        _, err = engine.communicate(timeout=60)
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.communicate()
    assert engine.returncode == 0, err
    executions = count_file.read_text().splitlines()
    assert len(executions) == 90, "every node ran exactly once: the engine never noticed"


async def test_opened_by_a_night_the_console_says_it_goes_on_and_when_it_ends(night):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        app = PantheonConsole(
            night, watch=False, clock=lambda: NOW, night=proc, night_log=night / "night.log"
        )
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("q")
            assert isinstance(app.screen, ConfirmScreen)
            assert "goes on in the background" in str(app.screen.query_one("#dialog-body").render())
            await pilot.press("n")
            assert app.is_running
            proc.kill()
            proc.wait()
            await _until(pilot, lambda: "the night is over" in app.sub_title, timeout=10)
            await pilot.press("q")  # nothing left to leave running: no question
            await pilot.pause()
            assert not app.is_running
    finally:
        proc.kill()
        proc.wait()


async def test_the_tokens_tile_says_the_share_of_prompt_the_server_took_from_its_cache(night):
    samples = [
        {"ts": NOW - 2, "tokens": {"generated": 30.0, "prompt": 200.0, "source": "x"}},
        {
            "ts": NOW - 1,
            "tokens": {"generated": 34.0, "prompt": 220.0, "source": "x"},
            "cache": {"share": 0.5, "cached": 500, "prompt": 1000},
        },
        {
            "ts": NOW,
            "tokens": {"generated": 32.0, "prompt": 210.0, "source": "x"},
            "cache": {"share": 0.7, "cached": 700, "prompt": 1000},
        },
    ]
    with open(night / "metrics" / "engine.jsonl", "a") as fh:
        fh.writelines(json.dumps(s) + "\n" for s in samples)
    app = console(night)
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause()
        tile = app.screen.query_one("#tile-tokens", MetricTile)
        # 1200 of 2000 prompt tokens over the last 30 s (the frozen night's samples say none)
        assert tile.detail.startswith("in ") and tile.detail.endswith(" (60% cached)")


async def test_the_canary_tile_says_when_the_calibration_found_the_gate_blind(night):
    gate = {"kind": "code", "reviewer": "gate", "auroc": 0.58, "low": 0.38, "high": 0.79}
    canaries = {"n": 6, "caught": 1, "share": 1 / 6, "by_change": {"code": {"n": 6}}}
    sample = {"ts": NOW, "canaries": canaries, "calibration": [{**gate, "informative": False}]}
    with open(night / "metrics" / "engine.jsonl", "a") as fh:
        fh.write(json.dumps(sample) + "\n")
    app = console(night)
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause()
        tile = app.screen.query_one("#tile-canary", MetricTile)
        assert tile.detail == "caught; gate blind"
        assert "gate blind" in str(tile.tooltip)


async def test_with_several_servers_the_dashboard_lists_each_and_a_dead_one(night):
    app = console(night)
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause()
        assert not app.screen.query_one("#servers").display  # one server: the tiles say it
    add_servers_sample(night)
    app = console(night)
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause()
        assert app.screen.query_one("#servers").display
        rendered = Console(width=140, record=True)
        rendered.print(app.screen.query_one("#servers", Static).content)
        lines = [" ".join(line.split()) for line in rendered.export_text().splitlines()]
    assert any(line.startswith("server health in flight calls batch tok/s") for line in lines)
    assert "127.0.0.1:8011 up 3 40 3.5 21.2 180" in lines
    assert "127.0.0.1:8012 DOWN 0 9 – – – its calls go to the others until it answers" in lines


def test_the_servers_table_names_each_servers_model_when_they_are_of_several():
    from pantheon.widgets.server_list import server_table

    rows = [
        {"where": "127.0.0.1:8011", "model": "qwen2.5-coder-0.5b", "up": True, "batch": 2.0},
        {"where": "127.0.0.1:8012", "model": "qwen2.5-coder-1.5b", "up": True, "calls": 7},
    ]
    rendered = Console(width=140, record=True)
    rendered.print(server_table(rows))
    lines = [" ".join(line.split()) for line in rendered.export_text().splitlines()]
    assert "127.0.0.1:8011 qwen2.5-coder-0.5b up – 0 2.0 – –" in lines
    assert "127.0.0.1:8012 qwen2.5-coder-1.5b up – 7 – – –" in lines


async def test_with_two_engines_the_dashboard_lists_each_and_a_silent_one(night):
    import time

    from pantheon.core.observe.engines import SILENT_S, EngineBeat, write_beat

    app = console(night)
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause(1.2)
        assert not app.screen.query_one("#engines").display  # none (or one): nothing to say
    now = time.time()
    for host, pid, role, beat in (("gpu-1", 41, "night", now), ("cpu-2", 7, "engine", now - 99)):
        write_beat(
            night,
            EngineBeat(
                owner=f"{host}:{pid}:ab", host=host, pid=pid, role=role, started=now - 60,
                beat=beat, running=[1], servers=["127.0.0.1:8011"],
            ),
        )  # fmt: skip
    assert now - 99 < now - SILENT_S
    app = console(night)
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause(1.2)
        assert app.screen.query_one("#engines").display
        rendered = Console(width=140, record=True)
        rendered.print(app.screen.query_one("#engines", Static).content)
        text = rendered.export_text()
    assert "gpu-1 pid 41 (night): 1 running" in text
    assert "cpu-2 pid 7 (engine): 1 running" in text and "SILENT since" in text
