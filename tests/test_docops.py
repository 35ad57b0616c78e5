"""The docops flow on a real git repository: frontmatter written, checked, reviewed, merged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml
from helpers import META, docops_model, docops_night, git, scripted_model, verdict_reply

from pantheon.core import Engine, JobQueue, enqueue, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.model.client import LLMClient
from pantheon.core.model.files import TEST_MODEL, ModelStore
from pantheon.core.model.server import ModelServer, ServerConfig
from pantheon.core.store.control import ControlFile
from pantheon.core.work.doccheck import split_frontmatter


def test_green_jobs_are_merged_into_the_target(artifacts, registry, repo):
    llm, http = docops_model({"a": True, "b": True})
    ids = docops_night(
        artifacts, registry, repo, ["docs/doc0.md", "docs/doc1.md", "docs/doc2.md"], llm
    )
    asyncio.run(http.aclose())
    for job in ids:
        run = artifacts / "runs" / f"docops-{job:06d}"
        merge = json.loads((run / "merge" / "output.json").read_text())
        assert merge["merged"] is True and merge["branch"] == f"pantheon/docops/{job}"
        for node in ("plan", "write", "test", "review_a", "review_b"):
            assert (run / node / "output.json").exists()
    for i in range(3):
        meta, body = split_frontmatter(git(repo, "show", f"main:docs/doc{i}.md") + "\n")
        assert meta == META and body.strip()
    with JobQueue(artifacts) as q:
        assert q.review_pairs(10) == [(True, True)] * 3


def test_a_rejected_change_waits_on_its_branch(artifacts, registry, repo):
    llm, http = docops_model({"a": True, "b": False})
    [job] = docops_night(artifacts, registry, repo, ["docs/doc0.md"], llm)
    asyncio.run(http.aclose())
    run = artifacts / "runs" / f"docops-{job:06d}"
    failed = json.loads((run / "FAILED.json").read_text())
    assert failed["node"] == "review_b" and "wrong title" in failed["error"]
    assert not (run / "merge").exists()
    assert git(repo, "rev-parse", "--verify", f"pantheon/docops/{job}")
    assert split_frontmatter(git(repo, "show", "main:docs/doc0.md"))[0] is None
    with JobQueue(artifacts) as q:
        assert q.review_pairs(10) == [(True, False)]


def test_paused_merges_leave_green_changes_waiting(artifacts, registry, repo):
    ControlFile(artifacts).update(by="op", merges_paused=True, merges_paused_reason="κ low")
    llm, http = docops_model({"a": True, "b": True})
    [job] = docops_night(artifacts, registry, repo, ["docs/doc0.md"], llm)
    asyncio.run(http.aclose())
    merge = json.loads(
        (artifacts / "runs" / f"docops-{job:06d}" / "merge" / "output.json").read_text()
    )
    assert merge == {
        "merged": False,
        "waiting": True,
        "reason": "merges are paused (κ low)",
        "branch": f"pantheon/docops/{job}",
        "commit": None,
        "conflict": [],
        "repo": str(repo.resolve()),
        "remote": None,
        "target": "main",
        "files": ["docs/doc0.md"],
        "added": 6,  # ---, title, description, tags: and its item, ---
        "removed": 0,
    }
    assert split_frontmatter(git(repo, "show", "main:docs/doc0.md"))[0] is None


def test_a_missing_file_and_a_missing_repo_are_clear(artifacts, registry, repo, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    llm, http = docops_model({})
    flow = load_flow(packaged_flows_dir() / "docops.yaml", registry)
    with JobQueue(artifacts) as q:
        a, b = enqueue(
            q,
            flow,
            [
                {"repo": str(repo), "path": "docs/nope.md"},
                {"repo": str(plain), "path": "x.md"},
            ],
        )
    asyncio.run(Engine(artifacts, registry, until_empty=True, tick_s=0.01, llm=llm).run())
    asyncio.run(http.aclose())
    first = json.loads((artifacts / "runs" / f"docops-{a:06d}" / "FAILED.json").read_text())
    assert first["node"] == "plan" and "no file 'docs/nope.md'" in first["error"]
    second = json.loads((artifacts / "runs" / f"docops-{b:06d}" / "FAILED.json").read_text())
    assert "has no workspace" in second["error"] and "is not a git repository" in second["error"]


@pytest.mark.slow
def test_a_small_docs_night_on_the_real_model(tmp_path, registry, repo):
    """SmolLM2 writes the frontmatter and reviews it; every run ends with its artifacts."""
    ModelStore().pull(TEST_MODEL)
    artifacts = tmp_path / "a"
    server = ModelServer(artifacts, ServerConfig(model=TEST_MODEL, port=0, parallel=4))
    state = server.start()
    try:

        async def go():
            async with LLMClient(state.endpoint) as llm:
                flow = load_flow(packaged_flows_dir() / "docops.yaml", registry)
                with JobQueue(artifacts) as q:
                    ids = enqueue(
                        q, flow, [{"repo": str(repo), "path": f"docs/doc{i}.md"} for i in range(2)]
                    )
                await Engine(artifacts, registry, until_empty=True, llm=llm).run()
                return ids

        ids = asyncio.run(go())
    finally:
        server.stop()
    merged = 0
    for job in ids:
        run = artifacts / "runs" / f"docops-{job:06d}"
        record = json.loads((run / "run.json").read_text())
        assert record["status"] in ("done", "failed")
        if record["status"] == "failed":
            failed = json.loads((run / "FAILED.json").read_text())
            if failed["node"] == "write":  # the reply broke a check twice: nothing committed
                assert "breaks what was asked" in failed["error"] or "JSON" in failed["error"]
                continue
        meta, _ = split_frontmatter(
            git(repo, "show", f"pantheon/docops/{job}:docs/doc{job - 1}.md") + "\n"
        )
        assert meta and meta["title"], "the writer's frontmatter is on the job's branch"
        if record["status"] == "done":
            merged += json.loads((run / "merge" / "output.json").read_text())["merged"]
        else:
            assert (run / "FAILED.json").exists()
    main_meta = [
        split_frontmatter(git(repo, "show", f"main:docs/doc{i}.md") + "\n")[0] for i in range(2)
    ]
    assert sum(m is not None for m in main_meta) == merged
    assert yaml.safe_load  # the frontmatter on main parsed above


def test_a_writer_that_breaks_a_check_gets_sampled_replies_and_the_first_that_passes_is_used(
    artifacts, registry, repo
):
    two = {**META, "description": "It opens a store. It also closes it."}
    good = {**META, "description": "Explains how a store is opened and closed."}

    def answer(body):
        if body["messages"][0]["content"].startswith("You review"):
            return verdict_reply(body, True, "fine")
        answers = [two, good, good, two][: body["n"]] if body.get("n") else [two]
        return [json.dumps(a) for a in answers]

    llm, http = scripted_model(
        answer,
        usage={"prompt_tokens": 9, "completion_tokens": 9},
        finish_reason="stop",
        tokens=lambda content: [1, 2],
    )
    [job] = docops_night(artifacts, registry, repo, ["docs/doc0.md"], llm)
    asyncio.run(http.aclose())
    run = artifacts / "runs" / f"docops-{job:06d}"
    assert (
        json.loads((run / "write" / "output.json").read_text())["description"]
        == good["description"]
    )
    calls = [json.loads(x) for x in (run / "write" / "calls.jsonl").read_text().splitlines()]
    assert [c["step"] for c in calls][:3] == [1, 2, "sample 1"]
    assert "more than one sentence" in calls[0]["error"]
    assert [c.get("chosen") for c in calls[2:]] == [False, True, False, False]
    assert json.loads((run / "merge" / "output.json").read_text())["merged"] is True


OFF_PAGE = "Explains how to replicate a store to a remote server over TLS."


def _writer_then_reviewers(descriptions: list[str]):
    """A server: the writer's replies in turn (the last one again), reviewers passing."""
    said = list(descriptions)

    def answer(body):
        if body["messages"][0]["content"].startswith("You review"):
            return verdict_reply(body, True, "fine")
        text = said.pop(0) if len(said) > 1 else said[0]
        return json.dumps({**META, "description": text})

    return scripted_model(answer, usage={"prompt_tokens": 9, "completion_tokens": 9})


def _night(artifacts, registry, repo, llm, flow_text: str | None = None, **engine) -> Path:
    flow_path = packaged_flows_dir() / "docops.yaml"
    if flow_text is not None:
        flow_path = artifacts.parent / "docops-custom.yaml"
        flow_path.write_text(flow_text)
    flow = load_flow(flow_path, registry)
    with JobQueue(artifacts) as q:
        [job] = enqueue(q, flow, [{"repo": str(repo), "path": "docs/doc0.md"}])
    asyncio.run(Engine(artifacts, registry, until_empty=True, tick_s=0.01, llm=llm, **engine).run())
    return artifacts / "runs" / f"docops-{job:06d}"


def test_a_description_of_what_the_page_lacks_is_asked_again_and_the_gate_fails_it(
    artifacts, registry, repo
):
    """A description whose words the page does not have is not written: the writer is asked
    again with the words named; a writer allowed to keep it (its node's grounded_min 0) meets
    the test gate, which fails it by name, so it never reaches the reviewers."""
    page = (repo / "docs" / "doc0.md").read_text()
    right = "Explains what this page covers."
    assert "replicate" not in page.lower() and "tls" not in page.lower()

    llm, http = _writer_then_reviewers([OFF_PAGE, right])
    run = _night(artifacts, registry, repo, llm)
    asyncio.run(http.aclose())
    calls = [json.loads(x) for x in (run / "write" / "calls.jsonl").read_text().splitlines()]
    assert "speaks of what the page does not: 'replicate'" in calls[0]["error"]
    assert json.loads((run / "write" / "output.json").read_text())["description"] == right
    assert json.loads((run / "merge" / "output.json").read_text())["merged"] is True

    text = (packaged_flows_dir() / "docops.yaml").read_text()
    lax = text.replace("    inputs: {path: $input.path}\n    after: [plan]\n",
                       "    inputs: {path: $input.path}\n    after: [plan]\n"
                       "    params: {grounded_min: 0}\n", 1)  # fmt: skip
    assert lax != text
    llm, http = _writer_then_reviewers([OFF_PAGE])
    run = _night(artifacts, registry, repo, llm, lax)
    asyncio.run(http.aclose())
    test = json.loads((run / "test" / "output.json").read_text())
    assert test["passed"] is False and test["checks"]["description speaks of the page"] is False
    assert any("'replicate'" in r and "needed" in r for r in test["reasons"])
    assert not (run / "review_a").exists() and not (run / "merge").exists()


def test_the_nights_grounding_setting_reaches_the_writer_and_the_gate(artifacts, registry, repo):
    """gates.grounding_min 0 turns the check off for the nodes that do not set it."""
    llm, http = _writer_then_reviewers([OFF_PAGE])
    run = _night(artifacts, registry, repo, llm, grounding_min=0.0)
    asyncio.run(http.aclose())
    assert json.loads((run / "write" / "output.json").read_text())["description"] == OFF_PAGE
    test = json.loads((run / "test" / "output.json").read_text())
    assert test["passed"] is True and "description speaks of the page" not in test["checks"]
