"""The morning review and report on a real night: a real git repository, real docops runs."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import pytest
from helpers import docops_model, docops_night, git, pantheon

from pantheon.core import JobQueue
from pantheon.core.morning.report import SCHEMA, build_summary, write_report
from pantheon.core.morning.review import DECISIONS_FILE, ReviewError, merge_by_hand, reject
from pantheon.core.store.control import ControlFile
from pantheon.core.work.doccheck import split_frontmatter


@pytest.fixture
def night(artifacts, registry, repo):
    """Three docs merged while merges ran, three waiting (merges paused), one a reviewer failed."""
    llm, http = docops_model({"a": True, "b": True})
    docops_night(artifacts, registry, repo, ["docs/doc0.md", "docs/doc1.md", "docs/doc2.md"], llm)
    ControlFile(artifacts).update(by="op", merges_paused=True, merges_paused_reason="κ low")
    docops_night(artifacts, registry, repo, ["docs/doc3.md", "docs/doc4.md", "docs/doc5.md"], llm)
    asyncio.run(http.aclose())
    llm, http = docops_model({"a": True, "b": False})
    docops_night(artifacts, registry, repo, ["docs/doc6.md"], llm)
    asyncio.run(http.aclose())
    return artifacts


def changes_by_job(artifacts):
    return {c["job"]: c for c in build_summary(artifacts)["changes"]}


def test_the_summary_lists_every_change_with_its_state(night, repo):
    summary = build_summary(night)
    assert summary["schema"] == SCHEMA
    changes = {c["job"]: c for c in summary["changes"]}
    assert [changes[j]["state"] for j in (1, 2, 3)] == ["merged"] * 3
    assert [changes[j]["state"] for j in (4, 5, 6, 7)] == ["waiting"] * 4
    four = changes[4]
    assert four["branch"] == "pantheon/docops/4" and four["target"] == "main"
    assert four["files"] == ["docs/doc3.md"] and four["added"] == 6
    assert four["tests"] is True and four["reviews"] == [True, True]
    assert "merges are paused" in four["reason"]
    seven = changes[7]
    assert seven["reviews"] == [True, False] and seven["failed_node"] == "review_b"
    assert summary["failures"][0]["run"] == "docops-000007"
    assert summary["failures"][0]["artifact"].startswith("runs/docops-000007/")
    assert summary["figures"]["merged"] == 3 and summary["figures"]["waiting"] == 4
    assert summary["figures"]["kappa_pairs"] == 7
    assert summary["agents"]["merge.gate"]["done"] == 6
    assert summary["jobs"]["done"] == 6 and summary["jobs"]["failed"] == 1


def test_the_operator_merges_a_waiting_change_for_real(night, repo):
    from pantheon.core.morning.review import Change

    change = Change(**{**changes_by_job(night)[4], "reviews": (True, True)})
    decision = merge_by_hand(night, change, by="ana")
    assert split_frontmatter(git(repo, "show", "main:docs/doc3.md"))[0]["title"] == "A title"
    assert git(repo, "rev-parse", "main") == decision.commit
    line = json.loads((night / DECISIONS_FILE).read_text().splitlines()[-1])
    assert line["action"] == "merged" and line["by"] == "ana" and line["run"] == "docops-000004"
    after = changes_by_job(night)[4]
    assert after["state"] == "merged" and after["decided_by"] == "ana"
    with pytest.raises(ReviewError, match="already merged"):
        merge_by_hand(night, change)


def test_a_change_a_reviewer_failed_can_still_be_merged_by_hand(night, repo):
    from pantheon.core.morning.review import Change

    change = Change(**{**changes_by_job(night)[7], "reviews": (True, False)})
    merge_by_hand(night, change)
    assert split_frontmatter(git(repo, "show", "main:docs/doc6.md"))[0] is not None


def test_a_rejected_change_keeps_its_branch_under_a_rejected_name(night, repo):
    from pantheon.core.morning.review import Change

    change = Change(**{**changes_by_job(night)[5], "reviews": (True, True)})
    decision = reject(night, change, by="ana", why="tags are wrong")
    assert decision.kept_as == "pantheon/rejected/docops/5"
    branches = git(repo, "branch", "--list", "--format=%(refname:short)").split()
    assert "pantheon/rejected/docops/5" in branches and "pantheon/docops/5" not in branches
    assert split_frontmatter(git(repo, "show", "main:docs/doc4.md"))[0] is None
    after = changes_by_job(night)[5]
    assert after["state"] == "rejected" and after["reason"] == "tags are wrong"
    assert after["branch"] == "pantheon/rejected/docops/5"
    with pytest.raises(ReviewError):
        merge_by_hand(night, change)


def test_a_conflict_is_refused_with_the_files_and_nothing_is_recorded(night, repo):
    from pantheon.core.morning.review import Change

    doc = repo / "docs" / "doc3.md"
    doc.write_text("---\ntitle: Someone else's\n---\n" + doc.read_text())
    git(repo, "commit", "-qam", "a colleague's frontmatter")
    before = git(repo, "rev-parse", "main")
    change = Change(**{**changes_by_job(night)[4], "reviews": (True, True)})
    with pytest.raises(ReviewError, match=r"conflict in docs/doc3\.md"):
        merge_by_hand(night, change)
    assert git(repo, "rev-parse", "main") == before
    assert not (night / DECISIONS_FILE).exists()
    assert changes_by_job(night)[4]["state"] == "waiting"


def test_a_target_that_moved_on_still_merges(night, repo):
    from pantheon.core.morning.review import Change

    (repo / "NOTES.md").write_text("written during the night\n")
    git(repo, "add", "NOTES.md")
    git(repo, "commit", "-qm", "notes")
    change = Change(**{**changes_by_job(night)[6], "reviews": (True, True)})
    merge_by_hand(night, change)
    assert git(repo, "show", "main:NOTES.md") == "written during the night"
    assert split_frontmatter(git(repo, "show", "main:docs/doc5.md"))[0] is not None


def test_the_report_is_incremental_and_lists_a_corrupt_run(night):
    summary, _ = write_report(night)
    assert json.loads((night / "summary.json").read_text())["changes"] == summary["changes"]
    (night / "runs" / "docops-000002" / "run.json").write_text('{"run_id": "00')
    summary, _ = write_report(night)
    assert summary["corrupt"] == [
        {"run": "docops-000002", "problem": summary["corrupt"][0]["problem"]}
    ]
    assert "not valid JSON" in summary["corrupt"][0]["problem"]
    assert 2 not in {c["job"] for c in summary["changes"]}
    html = (night / "report.html").read_text()
    assert "docops-000002" in html and "unreadable" in html
    assert "<script" not in html and "http" not in html.replace("http-equiv", "")


def test_a_garbled_node_output_is_listed_and_the_change_still_shown(night, capsys):
    from pantheon.console.cli import main

    summary, _ = write_report(night)
    change = summary["changes"][0]
    run = night / "runs" / change["run"]
    [node] = [d for d in run.iterdir() if (d / "output.json").exists()][:1]
    (node / "output.json").write_text('{"passed": tr')
    summary, _ = write_report(night)
    [bad] = [c for c in summary["corrupt"] if c["run"] == change["run"]]
    assert str(node / "output.json") in bad["problem"] and "not valid JSON" in bad["problem"]
    assert change["run"] in {c["run"] for c in summary["changes"]}, "the change is still shown"
    assert main(["report", "--artifacts", str(night)]) == 0
    out = capsys.readouterr().out
    assert f"{change['run']}: {node / 'output.json'} is corrupt" in out


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_html_report_renders_in_a_real_browser(night, tmp_path):
    from night_fixture import write_samples

    write_samples(night)  # an hour of samples, so that every chart has a line to draw
    write_report(night)
    page = (night / "report.html").as_uri()
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*args, "--dump-dom", page], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert '<table id="changes">' in dom and dom.count("pantheon/docops/") >= 7
    assert '<table id="failures">' in dom and "docops-000007" in dom
    for chart in ("done", "depth", "tokens", "kappa"):
        assert f'id="chart-{chart}"' in dom
    assert dom.count("<polyline") == 4
    shot = tmp_path / "report.png"
    subprocess.run(
        [*args, "--window-size=1200,1600", f"--screenshot={shot}", page],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 20_000  # a page with tables and charts, not a blank one


def test_the_report_command(night):
    done = pantheon("report", "--artifacts", str(night))
    assert done.returncode == 0, done.stderr
    assert "changes   3 merged, 4 waiting, 0 rejected" in done.stdout
    with JobQueue(night) as q:
        assert q.pending() == 0


def test_a_job_the_queue_failed_behind_its_run_json_is_still_a_failure(tmp_path):
    import sqlite3

    from night_fixture import make_night

    night = make_night(tmp_path / "artifacts")
    db = sqlite3.connect(night / "pantheon.db")
    with db:  # the engine gave up on it: the model server never answered
        db.execute(
            "UPDATE jobs SET status = 'failed', error = ? WHERE id = 1",
            ("the model server did not answer this job in 20 tries",),
        )
    db.close()
    run_json = night / "runs" / "textstats-000001" / "run.json"
    run_json.write_text(run_json.read_text().replace('"status": "done"', '"status": "stopped"'))
    failures = {f["run"]: f for f in build_summary(night)["failures"]}
    assert "did not answer" in failures["textstats-000001"]["error"]
    assert failures["textstats-000001"]["artifact"] == "runs/textstats-000001/run.json"
