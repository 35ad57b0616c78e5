"""Merges into a shared git remote, for several engine hosts working on one repository.

Each host has its own clone; the target branch that counts is the remote's. A job's branch is
made from the remote's latest target (:func:`sync_target`), and a change lands by
:func:`land`: fetch the remote's target, merge the job's branch onto it (``git merge-tree``, no
working tree touched), push the merge commit — and when another host pushed first (the push is
refused as not a fast-forward), fetch and do it again. A conflict lands nothing and names the
files; the branch waits for the morning review as it does on one host. Nothing is ever forced.
"""

from __future__ import annotations

import logging

from pantheon.core.store.atomic import locked
from pantheon.core.work.git import AS_PANTHEON, GitError, GitRepo, MergeResult

__all__ = [
    "LAND_TRIES",
    "fetch_target",
    "land",
    "landed",
    "push_target",
    "remote_tip",
    "sync_target",
]

log = logging.getLogger(__name__)

LAND_TRIES = 8
"""How many times a merge is made again on a remote that keeps moving before it waits."""


def _tracking(remote: str, target: str) -> str:
    return f"refs/remotes/{remote}/{target}"


def _remote_lock(repo: GitRepo):
    """One remote operation of a clone at a time (fetch, push, the tracking ref), across the
    engine's threads and processes: git's own ref locks refuse a second writer rather than
    wait for it."""
    return locked(repo.common_dir / "pantheon-remote.lock")


def fetch_target(repo: GitRepo, remote: str, target: str) -> str:
    """Fetch ``target`` from ``remote`` (the caller holds the clone's remote lock); the
    commit it is at there."""
    done = repo.attempt(
        "fetch", "--quiet", "--no-tags", remote, f"+refs/heads/{target}:{_tracking(remote, target)}"
    )
    if done.returncode != 0:
        raise GitError(
            f"cannot fetch {target!r} from the remote {remote!r} of {repo.path}: "
            f"{done.stderr.strip()[:300]}",
            hint="check that the remote is reachable (`git fetch` in the clone) and has the branch",
        )
    return repo.git("rev-parse", _tracking(remote, target)).strip()


def remote_tip(repo: GitRepo, remote: str, target: str) -> str:
    """Fetch ``target`` from ``remote``; the commit it is at there. GitError when the remote
    cannot be reached or has no such branch."""
    with _remote_lock(repo):
        return fetch_target(repo, remote, target)


def _is_ancestor(repo: GitRepo, older: str, newer: str) -> bool:
    return repo.attempt("merge-base", "--is-ancestor", older, newer).returncode == 0


def _fast_forward_local(repo: GitRepo, target: str, commit: str) -> None:
    """Bring the local target branch up to ``commit`` when that is a fast-forward (local work
    on it is never rewritten); a checked-out target is moved in its worktree."""
    if not repo.has_branch(target):
        repo.git("branch", target, commit)
        return
    local = repo.tip(target)
    if local == commit or not _is_ancestor(repo, local, commit):
        return
    checked_out = repo.worktrees().get(target)
    if checked_out is None:
        repo.git("update-ref", f"refs/heads/{target}", commit, local)
        return
    if repo.git("status", "--porcelain", "--untracked-files=no", cwd=checked_out):
        log.warning(
            "%s has uncommitted changes: its %s is left behind the remote", checked_out, target
        )
        return
    repo.git("merge", "--ff-only", "--quiet", commit, cwd=checked_out)


def sync_target(repo: GitRepo, remote: str, target: str) -> str:
    """The local target brought to the remote's (a fast-forward); the remote's tip."""
    with locked(repo.common_dir / "pantheon-merge.lock"), _remote_lock(repo):
        tip = fetch_target(repo, remote, target)
        _fast_forward_local(repo, target, tip)
    return tip


def _push(repo: GitRepo, remote: str, commit: str, target: str) -> bool:
    """Push ``commit`` as the remote's ``target``; False when the remote moved meanwhile."""
    done = repo.attempt("push", "--quiet", remote, f"{commit}:refs/heads/{target}")
    if done.returncode == 0:
        return True
    text = done.stderr
    if "non-fast-forward" in text or "fetch first" in text or "rejected" in text:
        return False
    raise GitError(
        f"cannot push to the remote {remote!r} of {repo.path}: {text.strip()[:300]}",
        hint="check that this host may push to it (`git push` in the clone)",
    )


def land(
    repo: GitRepo, branch: str, target: str, remote: str, message: str, *, tries: int = LAND_TRIES
) -> MergeResult:
    """Merge ``branch`` into the remote's ``target`` and push it; again while another host
    pushed first. A conflict (or a remote that keeps moving) merges nothing."""
    if not repo.has_branch(branch):
        raise GitError(f"cannot merge {branch!r}: no such branch in {repo.path}")
    with locked(repo.common_dir / "pantheon-merge.lock"), _remote_lock(repo):
        for attempt in range(1, tries + 1):
            base = fetch_target(repo, remote, target)
            head = repo.tip(branch)
            if _is_ancestor(repo, head, base):
                _fast_forward_local(repo, target, base)
                return MergeResult(True, base, [], f"already merged into {remote}/{target}")
            tree, conflict = repo.merge_tree(base, head)
            if tree is None:
                return MergeResult(False, None, conflict, "conflict")
            commit = repo.git(
                *AS_PANTHEON, "commit-tree", tree, "-p", base, "-p", head, "-m", message
            ).strip()
            if _push(repo, remote, commit, target):
                repo.git("update-ref", _tracking(remote, target), commit)
                _fast_forward_local(repo, target, commit)
                reason = f"merged into {remote}/{target}"
                if attempt > 1:
                    reason += f" (again after {attempt - 1} push(es) by another host)"
                return MergeResult(True, commit, [], reason)
            log.info("%s/%s moved while %s merged: merging it again", remote, target, branch)
    return MergeResult(
        False, None, [], f"{remote}/{target} kept moving: {tries} merges were overtaken"
    )


def landed(repo: GitRepo, remote: str, target: str, branch: str) -> str | None:
    """The merge commit that landed ``branch`` on the remote's ``target`` (its message names
    the branch: an engine that merged it and died before recording it), or None. The local
    target is brought to the remote's on the way (:func:`sync_target`), so a job that starts
    next needs no second fetch."""
    tip = sync_target(repo, remote, target)
    found = repo.attempt(
        "log", "--merges", "--fixed-strings", f"--grep=Merge {branch} (", "--format=%H", "-1", tip
    )
    return found.stdout.strip() or None


def push_target(repo: GitRepo, remote: str, target: str) -> None:
    """Push the local target (a commit made on it here, such as a revert) to the remote; a
    remote that moved meanwhile is GitError, nothing forced."""
    with _remote_lock(repo):
        if not _push(repo, remote, repo.tip(target), target):
            raise GitError(
                f"{remote}/{target} moved: the commit on {target} is not pushed",
                hint=f"fetch and merge {remote}/{target} into {target} in {repo.path}, then push",
            )
        repo.git("update-ref", _tracking(remote, target), repo.tip(target))
