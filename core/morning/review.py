"""The morning review: the changes a night made, and the operator's merge or reject.

A *change* is a run that worked on a branch of a target repository and got as far as its tests:
the merge gate either merged it, or left it waiting (a reviewer said no, its tests failed, merges
were paused, or it conflicts). The operator decides on the waiting ones: a merge is a real git
merge into the target branch (refused, with the files, on a conflict); a reject keeps the branch
under ``pantheon/rejected/...``. A merged change can be reverted: a commit on the target branch
that undoes its merge. Every decision is a line of ``decisions.jsonl``, which the report and the
trainer read: a rejected or reverted change is never a green trace.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from pantheon.core.errors import ArtifactError, PantheonError
from pantheon.core.store.atomic import append_line, locked, read_json
from pantheon.core.store.jsonl import read_jsonl
from pantheon.core.store.layout import OUTPUT_FILE, branch_name
from pantheon.core.store.runs import RUNS, RunRecord
from pantheon.core.work.git import GitError, GitRepo

__all__ = [
    "DECISIONS_FILE",
    "Change",
    "Decision",
    "ReviewError",
    "apply_decision",
    "change_of",
    "merge_by_hand",
    "node_output",
    "read_decisions",
    "reject",
    "revert",
]

log = logging.getLogger(__name__)

DECISIONS_FILE = "decisions.jsonl"

# the agents whose failure comes after the change was made: the branch holds a change to judge
AFTER_CHANGE = ("test", "review.peer", "merge.gate")


class ReviewError(PantheonError):
    title = "Review"


class Decision(BaseModel):
    """One line of ``decisions.jsonl``."""

    run: str
    job: int
    action: Literal["merged", "rejected", "reverted"]
    by: str
    at: str
    why: str | None = None
    branch: str
    target: str
    repo: str
    commit: str | None = None
    """The merge commit (merged), or the commit that undid it (reverted)."""
    kept_as: str | None = None
    """The branch's new name (rejected)."""


def read_decisions(artifacts: Path) -> tuple[dict[str, Decision], int]:
    """The last decision on each run, and how many lines could not be read."""
    path = Path(artifacts) / DECISIONS_FILE
    values, bad = read_jsonl(path, record=Decision)
    out: dict[str, Decision] = {}
    for value in values:
        d = Decision.model_validate(value)
        out[d.run] = d
    if bad:
        log.warning("%s: %d line(s) could not be read and were skipped", path, len(bad))
    return out, len(bad)


@dataclass
class Change:
    """A change a run made, as the morning sees it."""

    run: str
    job: int
    flow: str
    branch: str
    target: str
    repo: str
    state: Literal["merged", "waiting", "rejected", "reverted"]
    reason: str
    tests: bool | None = None
    """Whether its tests passed (None: they did not run)."""
    reviews: tuple[bool | None, bool | None] = (None, None)
    files: list[str] = field(default_factory=list)
    added: int | None = None
    removed: int | None = None
    commit: str | None = None
    decided_by: str = "gate"
    """``gate`` (the merge gate, in the night) or the operator's name."""
    decided_at: str | None = None
    failed_node: str | None = None
    reverted_by: str | None = None
    """The commit that undid its merge (reverted)."""
    remote: str | None = None
    """The shared git remote its target is on (several engine hosts); None: the clone's."""

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def node_output(folder: Path, node: str) -> dict[str, Any] | None:
    try:
        data = read_json(folder / node / OUTPUT_FILE)
    except (FileNotFoundError, ArtifactError):
        return None
    return data if isinstance(data, dict) else None


def change_of(
    artifacts: Path,
    record: RunRecord,
    node_agents: dict[str, str],
    *,
    failed_node: str | None = None,
    error: str | None = None,
) -> Change | None:
    """The change a run made, or None when it made none to judge.

    ``node_agents`` maps the run's node ids to their agents (from the queue's ``nodes`` table or
    the flow). Reads the outputs of its test, review and merge nodes.
    """
    repo = record.input.get("repo")
    if not repo:
        return None
    folder = Path(artifacts) / RUNS / f"{record.flow}-{record.run_id}"
    by_agent: dict[str, list[str]] = {}
    for node, agent in node_agents.items():
        by_agent.setdefault(agent, []).append(node)
    merge = None
    for node in by_agent.get("merge.gate", []):
        merge = node_output(folder, node) or merge
    failed_agent = node_agents.get(failed_node or "")
    if merge is None and (record.status != "failed" or failed_agent not in AFTER_CHANGE):
        return None
    tests = None
    for node in by_agent.get("test", []):
        out = node_output(folder, node)
        if out is not None:
            tests = bool(out.get("passed"))
    reviews: list[bool | None] = []
    for node in sorted(by_agent.get("review.peer", [])):
        out = node_output(folder, node)
        reviews.append(None if out is None else bool(out.get("passed")))
    reviews = [*reviews, None, None][:2]
    target = str(record.input.get("target") or "main")
    change = Change(
        run=folder.name,
        job=record.job_id,
        flow=record.flow,
        branch=branch_name(record.flow, record.job_id),
        target=target,
        repo=str(repo),
        state="waiting",
        reason=f"{failed_node} failed: {error}" if failed_node else "",
        tests=tests,
        reviews=(reviews[0], reviews[1]),
        failed_node=failed_node,
        remote=record.input.get("remote") or None,
    )
    if merge is not None:
        change.branch = merge.get("branch") or change.branch
        change.target = merge.get("target") or change.target
        change.repo = merge.get("repo") or change.repo
        change.files = list(merge.get("files") or [])
        change.added = merge.get("added")
        change.removed = merge.get("removed")
        change.reason = merge.get("reason") or change.reason
        if merge.get("merged"):
            change.state = "merged"
            change.commit = merge.get("commit")
            change.decided_at = record.finished_at
    return change


def apply_decision(change: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """A change (as JSON) as the operator's decision left it."""
    return {
        **change,
        "state": decision.action,
        "decided_by": decision.by,
        "decided_at": decision.at,
        "reason": decision.why or f"{decision.action} by {decision.by}",
        "commit": change.get("commit")
        if decision.action == "reverted"
        else decision.commit or change.get("commit"),
        "reverted_by": decision.commit if decision.action == "reverted" else None,
        "branch": decision.kept_as or change.get("branch"),
    }


def _record(artifacts: Path, decision: Decision) -> None:
    append_line(
        Path(artifacts) / DECISIONS_FILE,
        json.dumps(decision.model_dump(mode="json"), ensure_ascii=False),
    )


def _decide(artifacts: Path, change: Change) -> GitRepo:
    if change.state != "waiting":
        raise ReviewError(
            f"{change.run} is already {change.state}"
            + (f" (by {change.decided_by})" if change.decided_by != "gate" else ""),
        )
    earlier, _ = read_decisions(artifacts)
    if change.run in earlier:
        d = earlier[change.run]
        raise ReviewError(f"{change.run} was already {d.action} by {d.by} at {d.at}")
    try:
        repo = GitRepo(Path(change.repo))
    except GitError as exc:
        raise ReviewError(f"cannot open the target repository: {exc.message}") from None
    if not repo.has_branch(change.branch):
        raise ReviewError(
            f"the branch {change.branch} is not in {change.repo} any more",
            hint="it was deleted or renamed by hand; nothing was recorded",
        )
    return repo


def merge_by_hand(artifacts: Path, change: Change, *, by: str = "operator") -> Decision:
    """Merge a waiting change into its target branch; ReviewError (nothing recorded) on a
    conflict or when it was already decided."""
    with locked(Path(artifacts) / ".decisions.lock"):
        repo = _decide(artifacts, change)
        try:
            message = f"Merge {change.branch} (merged by {by})"
            if change.remote:
                from pantheon.core.work.remote import land

                result = land(repo, change.branch, change.target, change.remote, message)
            else:
                result = repo.merge(change.branch, change.target, message)
        except GitError as exc:
            raise ReviewError(f"cannot merge {change.branch}: {exc.message}") from None
        if not result.merged:
            what = ", ".join(result.conflict) if result.conflict else result.reason
            raise ReviewError(
                f"{change.branch} does not merge into {change.target}: conflict in {what}"
                if result.conflict
                else f"{change.branch} does not merge into {change.target}: {what}",
                hint="resolve it by hand in the repository, or reject the change",
            )
        decision = Decision(
            run=change.run,
            job=change.job,
            action="merged",
            by=by,
            at=datetime.now(UTC).isoformat(),
            why=f"merged by {by}",
            branch=change.branch,
            target=change.target,
            repo=change.repo,
            commit=result.commit,
        )
        _record(artifacts, decision)
    return decision


def reject(artifacts: Path, change: Change, *, by: str = "operator", why: str = "") -> Decision:
    """Reject a waiting change: the branch is kept as ``pantheon/rejected/<flow>/<job>``."""
    with locked(Path(artifacts) / ".decisions.lock"):
        repo = _decide(artifacts, change)
        kept = change.branch.replace("pantheon/", "pantheon/rejected/", 1)
        if repo.has_branch(kept):
            raise ReviewError(f"a branch {kept} exists already in {change.repo}")
        worktree = repo.worktrees().get(change.branch)
        if worktree is not None:
            repo.remove_worktree(worktree)
        try:
            repo.rename_branch(change.branch, kept)
        except GitError as exc:
            raise ReviewError(f"cannot keep {change.branch} as {kept}: {exc.message}") from None
        decision = Decision(
            run=change.run,
            job=change.job,
            action="rejected",
            by=by,
            at=datetime.now(UTC).isoformat(),
            why=why or f"rejected by {by}",
            branch=change.branch,
            target=change.target,
            repo=change.repo,
            kept_as=kept,
        )
        try:
            _record(artifacts, decision)
        except (OSError, PantheonError) as exc:
            repo.rename_branch(kept, change.branch)  # unrecorded: as if nothing happened
            raise ReviewError(f"cannot record the rejection of {change.run}: {exc}") from None
    return decision


def revert(artifacts: Path, change: Change, *, by: str = "operator", why: str = "") -> Decision:
    """Undo a merged change: a commit on its target branch that reverts its merge commit;
    ReviewError (nothing recorded, nothing changed) when it cannot."""
    with locked(Path(artifacts) / ".decisions.lock"):
        earlier, _ = read_decisions(artifacts)
        if change.run in earlier and earlier[change.run].action == "reverted":
            d = earlier[change.run]
            raise ReviewError(f"{change.run} was already reverted by {d.by} at {d.at}")
        if change.state != "merged" or not change.commit:
            raise ReviewError(f"{change.run} is {change.state}, not merged: nothing to revert")
        try:
            repo = GitRepo(Path(change.repo))
            if change.remote:  # the revert goes on the shared target, and is pushed there
                from pantheon.core.work.remote import push_target, sync_target

                sync_target(repo, change.remote, change.target)
            commit = repo.revert(
                change.commit,
                change.target,
                f"Revert {change.branch} (reverted by {by})" + (f": {why}" if why else ""),
            )
            if change.remote:
                push_target(repo, change.remote, change.target)
        except GitError as exc:
            raise ReviewError(
                f"cannot revert {change.branch} on {change.target}: {exc.message}",
                hint="later changes touch the same lines: revert it by hand in the repository",
            ) from None
        decision = Decision(
            run=change.run,
            job=change.job,
            action="reverted",
            by=by,
            at=datetime.now(UTC).isoformat(),
            why=why or f"reverted by {by}",
            branch=change.branch,
            target=change.target,
            repo=change.repo,
            commit=commit,
        )
        _record(artifacts, decision)
    return decision
