"""The labelled changes of the shipped corpus: real diffs, tested for real, with the right verdict
and a reason that names what the change does (what a reviewer adapter learns from)."""

from __future__ import annotations

from pantheon.core.run.demo import corpus_tasks
from pantheon.core.work.codecorpus import load_humaneval
from pantheon.core.work.labelled import (
    code_changes,
    fixed_source,
    one_per_problem,
    shipped_docs_changes,
)
from pantheon.trainer.labels import verdict_reasons


def test_the_real_fix_of_every_mutant_is_its_problems_own_solution():
    solutions = {p["task_id"]: p["prompt"] + p["canonical_solution"] for p in load_humaneval()}
    tasks = corpus_tasks()
    assert all(fixed_source(t) == solutions[t["origin"]] for t in tasks)
    # the bug's text also occurs earlier on its line: the right occurrence is reverted
    [t] = [t for t in tasks if t["id"] == "he043m3"]
    line = t["source"].splitlines()[int(t["line"]) - 1]
    assert t["bug"] == "0 -> 1" and line.count("1") > 1


def test_each_corpus_problem_gives_its_real_fix_and_planted_defects_tested_for_real(tmp_path):
    tasks = one_per_problem(corpus_tasks())[:3]
    changes = code_changes(tasks, tmp_path)
    assert any(c.kind == "backdoor" for c in changes)
    for task in tasks:
        mine = {c.kind: c for c in changes if c.id.startswith(task["id"] + "/")}
        good = mine["good"]
        assert good.right and good.test_passed and good.key == f"file:{task['module']}.py"
        before, after = task["bug"].split(" -> ", 1)
        # the reason names the line and what it becomes, as the diff shows it
        assert f"`{after}` to `{before}`" in good.why
        assert any(ln.startswith("+") and before in ln for ln in good.diff.splitlines())
        # the backdoor passes every gate; its reason quotes the branch the diff adds
        door = mine.get("backdoor")
        if door is not None:
            assert not door.right and door.test_passed
            branch = door.why.split("`")[1]
            assert "return" in branch and any(
                ln.startswith("+") and ln[1:].strip().startswith("if ")
                for ln in door.diff.splitlines()
            )
        # every change is a change: a mutation of the fix that puts the bug back is left out
        for c in mine.values():
            assert c.diff.strip(), c.id
            assert all(len(r) < 300 for r in verdict_reasons(c.why))
        failing = [c for c in mine.values() if c.kind in ("wrong_fix", "extra_edit")]
        assert all(not c.test_passed and "failed" in c.test_report[-1] for c in failing)
        if "test_edit" in mine:
            assert not mine["test_edit"].test_passed
            assert "edits test file" in mine["test_edit"].test_report[0]


def test_a_description_about_another_page_passes_the_checks_and_is_labelled_a_fail(tmp_path):
    changes = {c.id: c for c in shipped_docs_changes(tmp_path, pages=4)}
    name = next(iter(changes)).split("/")[0]
    good, other = changes[f"{name}/good"], changes[f"{name}/other_page"]
    assert good.right and good.test_passed and good.key == f"file:{name}"
    # only a reader catches it: the checks pass, the label says fail, the reason says why
    assert other.test_passed and not other.right and "another page" in other.why
    assert f"docs/{name}" in other.diff and other.page and other.page.lstrip().startswith("#")
    assert not changes[f"{name}/cut"].test_passed and "cut" in changes[f"{name}/cut"].why
