"""The docs checks on the demo's real pages, and the writer's retry when a reply breaks one."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import is_why_asked, scripted_model, verdict_reply

from pantheon.core import Engine, JobQueue, enqueue, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.work.doccheck import check_frontmatter, failed_checks

PAGES = packaged_flows_dir() / "corpus" / "repo" / "docs"
BACKUP = (PAGES / "api-backup.md").read_text()
GOOD = {
    "title": "store.backup()",
    "description": "Explains how to take a consistent copy of a live store with backup().",
    "tags": ["backup", "api"],
}


def failing(meta, body=BACKUP):
    return {c.name for c in check_frontmatter(meta, body) if not c.passed}


def test_a_careful_description_passes_every_check():
    checks = check_frontmatter(GOOD, BACKUP)
    assert all(c.passed for c in checks)
    assert {c.name for c in checks} == {
        "title",
        "description is one sentence",
        "description length",
        "description in its own words",
        "tags",
        "body kept",
    }


@pytest.mark.parametrize(
    ("change", "check"),
    [
        # what a grammar's maxLength left in the night's merged pages
        (
            {"description": "Strings are encoded as UTF-8 for you. Its"},
            "description is one sentence",
        ),
        ({"description": "Backups are consistent. They are fast."}, "description is one sentence"),
        ({"description": "Backups."}, "description length"),
        ({"description": "A " + "very " * 60 + "long sentence."}, "description length"),
        # a verbatim copy of the page's first sentences
        (
            {"description": "backup writes a consistent copy of the store. It takes path."},
            "description in its own words",
        ),
        ({"title": ""}, "title"),
        ({"title": "T" * 81}, "title"),
        ({"tags": ["Backup"]}, "tags"),
        ({"tags": ["how to take a backup"]}, "tags"),
        ({"tags": []}, "tags"),
        ({"tags": ["a", "b", "c", "d", "e", "f"]}, "tags"),
        ({"tags": ["kv", "kv"]}, "tags"),
    ],
)
def test_each_defect_fails_its_named_check(change, check):
    assert check in failing({**GOOD, **change})


def test_every_page_of_the_corpus_has_a_body_and_no_frontmatter_check_crashes():
    for page in sorted(PAGES.glob("*.md")):
        body = page.read_text()
        names = {c.name for c in check_frontmatter(GOOD, body)}
        assert "body kept" in names
    assert failed_checks(check_frontmatter(None)) == [
        "no YAML frontmatter mapping at the top of the file"
    ]
    assert "body kept" in failing(GOOD, body="   \n")


def scripted_writer(replies, verdicts):
    def answer(body):
        if body["messages"][0]["content"].startswith("You review"):
            if is_why_asked(body):
                return "fine"
            return verdict_reply(body, verdicts.pop(0), "fine")
        assert "maxLength" not in json.dumps(body.get("response_format")), (
            "no grammar cuts the model's text"
        )
        return [json.dumps(replies.pop(0)) for _ in range(body.get("n", 1))]

    return scripted_model(answer)


def run_docops(artifacts, registry, repo, llm):
    flow = load_flow(packaged_flows_dir() / "docops.yaml", registry)
    with JobQueue(artifacts) as q:
        [job] = enqueue(q, flow, [{"repo": str(repo), "path": "docs/doc0.md"}])
    asyncio.run(Engine(artifacts, registry, until_empty=True, tick_s=0.01, llm=llm).run())
    return artifacts / "runs" / f"docops-{job:06d}"


def test_a_reply_that_breaks_a_limit_is_asked_again_with_the_reason(artifacts, registry, repo):
    cut = {**GOOD, "description": "Explains how to take a consistent copy of a live store with"}
    llm, http = scripted_writer([cut, GOOD], [True, True])
    out = run_docops(artifacts, registry, repo, llm)
    asyncio.run(http.aclose())
    calls = [json.loads(x) for x in (out / "write" / "calls.jsonl").read_text().splitlines()]
    assert "stops mid-sentence" in calls[0]["error"]
    assert calls[1]["error"] is None
    assert "stops mid-sentence" in calls[1]["messages"][-1]["content"], "the retry says why"
    test = json.loads((out / "test" / "output.json").read_text())
    assert test["passed"] and all(test["checks"].values())
    assert json.loads((out / "merge" / "output.json").read_text())["merged"] is True


def test_two_replies_that_break_a_limit_fail_the_writer(artifacts, registry, repo):
    bad = {**GOOD, "tags": ["Key Value Stores Explained"]}
    llm, http = scripted_writer([bad] * 6, [])  # the greedy reply, its retry, 4 samples
    out = run_docops(artifacts, registry, repo, llm)
    asyncio.run(http.aclose())
    failed = json.loads((out / "FAILED.json").read_text())
    assert failed["node"] == "write" and "lowercase keywords" in failed["error"]
    assert "none of 4 sampled replies fits either" in failed["error"]
    assert not (out / "merge").exists()
