"""The morning review screen on a real night: a real repository, real docops runs, real merges."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from helpers import docops_model, docops_night, git

from pantheon.console.app import PantheonConsole
from pantheon.console.screens.dialogs import ConfirmScreen
from pantheon.console.screens.review import ReviewScreen
from pantheon.console.screens.run_detail import RunDetailScreen
from pantheon.core.morning.review import DECISIONS_FILE
from pantheon.core.store.control import ControlFile
from pantheon.core.work.doccheck import split_frontmatter
from pantheon.widgets.json_view import JsonView

SIZE = (110, 32)


@pytest.fixture
def night(tmp_path, registry, repo, monkeypatch):
    """Merges paused: four changes wait (three green, one a reviewer failed), run from the
    test's folder so that every path on screen is the same on every machine."""
    monkeypatch.chdir(tmp_path)
    artifacts = Path("artifacts")
    ControlFile(artifacts).update(by="op", merges_paused=True, merges_paused_reason="κ low")
    llm, http = docops_model({"a": True, "b": True})
    docops_night(artifacts, registry, repo, ["docs/doc0.md", "docs/doc1.md", "docs/doc2.md"], llm)
    asyncio.run(http.aclose())
    llm, http = docops_model({"a": True, "b": False})
    docops_night(artifacts, registry, repo, ["docs/doc3.md"], llm)
    asyncio.run(http.aclose())
    return artifacts


async def open_review(pilot) -> ReviewScreen:
    await pilot.press("r")
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    assert isinstance(pilot.app.screen, ReviewScreen)
    return pilot.app.screen


def listed(screen: ReviewScreen) -> list[str]:
    return [i["run"] for i in screen._visible()]


def head(screen: ReviewScreen) -> str:
    return str(screen.query_one("#review-head").render())


async def settle(pilot) -> None:
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def test_the_waiting_changes_with_diff_tests_and_reviews(night):
    app = PantheonConsole(night, watch=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_review(pilot)
        assert listed(screen) == [f"docops-00000{i}" for i in (1, 2, 3, 4)]
        assert "4 change(s) waiting · 0 merged · 0 rejected" in head(screen)
        assert "+title: A title" in screen.shown_text
        reviews = screen.query_one("#review-reviews", JsonView).plain
        assert "review_a (done)" in reviews and "review_b (done)" in reviews
        assert "passed" in screen.query_one("#review-tests", JsonView).plain


async def test_merge_and_reject_for_real_from_the_screen(night, repo):
    app = PantheonConsole(night, watch=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_review(pilot)
        await pilot.press("a")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert split_frontmatter(git(repo, "show", "main:docs/doc0.md"))[0]["title"] == "A title"
        assert listed(screen) == ["docops-000002", "docops-000003", "docops-000004"]
        await pilot.press("x", "y")
        await settle(pilot)
        assert "pantheon/rejected/docops/2" in git(repo, "branch", "--list", "pantheon/rejected/*")
        lines = [json.loads(x) for x in (night / DECISIONS_FILE).read_text().splitlines()]
        assert [(d["run"], d["action"], d["by"]) for d in lines] == [
            ("docops-000001", "merged", "operator"),
            ("docops-000002", "rejected", "operator"),
        ]
        assert "2 change(s) waiting · 1 merged · 1 rejected" in head(screen)
        await pilot.press("w")  # all changes, decided ones too
        assert len(listed(screen)) == 4


async def test_a_merged_change_shows_what_it_merged_and_is_reverted_for_real(night, repo):
    app = PantheonConsole(night, watch=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_review(pilot)
        await pilot.press("a", "y")  # merge docops-000001 by hand
        await settle(pilot)
        assert "title: A title" in git(repo, "show", "main:docs/doc0.md")
        await pilot.press("w")  # all changes: the merged one is listed last
        await settle(pilot)
        screen._selected = "docops-000001"
        screen.show_item()
        await settle(pilot)
        assert "+title: A title" in screen.shown_text, "a merged change shows its merge's diff"
        await pilot.press("u")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert "title: A title" not in git(repo, "show", "main:docs/doc0.md")
        assert "Revert pantheon/docops/1" in git(repo, "log", "-1", "--format=%s", "main")
        lines = [json.loads(x) for x in (night / DECISIONS_FILE).read_text().splitlines()]
        assert [(d["run"], d["action"]) for d in lines] == [
            ("docops-000001", "merged"),
            ("docops-000001", "reverted"),
        ]
        assert "1 reverted" in head(screen)
        await pilot.press("u")  # only a merged change can be reverted
        await settle(pilot)
        assert any("only a merged change" in n.message for n in app._notifications)


async def test_a_conflict_is_refused_on_screen_and_nothing_is_recorded(night, repo):
    doc = repo / "docs" / "doc0.md"
    doc.write_text("---\ntitle: Someone else's\n---\n" + doc.read_text())
    git(repo, "commit", "-qam", "a colleague's frontmatter")
    app = PantheonConsole(night, watch=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_review(pilot)
        await pilot.press("a", "y")
        await settle(pilot)
        assert not (night / DECISIONS_FILE).exists()
        assert listed(screen)[0] == "docops-000001"  # still waiting
        assert any("conflict in docs/doc0.md" in n.message for n in app._notifications)


async def test_failures_and_the_run_behind_them(night):
    app = PantheonConsole(night, watch=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_review(pilot)
        await pilot.press("f")
        await settle(pilot)
        assert listed(screen) == ["docops-000004"]
        assert screen.shown_text.startswith("FAILED at review_b")
        await pilot.press("a")  # a failure is not a change to merge from here
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("o")
        await settle(pilot)
        assert isinstance(app.screen, RunDetailScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, ReviewScreen)


def test_snapshot_of_the_review_screen(night, snap_compare):
    async def review(pilot):
        await open_review(pilot)

    assert snap_compare(PantheonConsole(night, watch=False), terminal_size=SIZE, run_before=review)
