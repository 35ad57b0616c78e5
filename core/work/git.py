"""The target repository: one branch and one git worktree per job, and real merges.

Each job works on its own branch ``pantheon/<flow>/<job>`` in its own worktree, so concurrent jobs
never share files. A merge into the target branch is a real git merge: in the worktree where the
target is checked out, when there is one, or else written straight into the branch (git merge-tree,
then an atomic ref update) without touching any working tree. A conflict merges nothing and says
which files; the branch waits for the morning review. Merges into one repository are serialized.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pantheon.core.errors import PantheonError
from pantheon.core.store.atomic import locked
from pantheon.core.store.layout import branch_name

AS_PANTHEON = ("-c", "user.name=Pantheon", "-c", "user.email=pantheon@localhost")
"""git's options for the commits Pantheon makes."""

__all__ = ["AS_PANTHEON", "GitError", "GitRepo", "JobWorkspace", "MergeResult", "run_git"]


class GitError(PantheonError):
    title = "Git error"


@dataclass(frozen=True, slots=True)
class MergeResult:
    merged: bool
    commit: str | None
    """The merge commit (or the branch tip, when it was already merged)."""
    conflict: list[str]
    """Files in conflict when the merge could not be made."""
    reason: str = ""


class GitRepo:
    """A git repository Pantheon's jobs change."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        top = self._run("rev-parse", "--show-toplevel", check=False)
        if top.returncode != 0:
            raise GitError(
                f"{self.path} is not a git repository",
                hint="point Pantheon at a clone (git init / git clone first)",
            )
        self.common_dir = Path(self.git("rev-parse", "--path-format=absolute", "--git-common-dir"))

    def _run(
        self,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["git", "-c", "core.hooksPath=/dev/null", *args]
        where = cwd or self.path
        try:
            done = subprocess.run(
                cmd,
                cwd=where,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            raise GitError(f"git {' '.join(args)} took more than 120 s in {where}") from None
        except OSError as exc:
            raise GitError(f"cannot run git in {where}: {exc.strerror or exc}") from None
        if check and done.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed: {done.stderr.strip()[:500]}")
        return done

    def attempt(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``git ARGS`` whose failure the caller reads (its return code and stderr)."""
        return self._run(*args, cwd=cwd, check=False)

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return self._run(*args, cwd=cwd).stdout.strip()

    def has_branch(self, name: str) -> bool:
        return (
            self._run(
                "rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False
            ).returncode
            == 0
        )

    def tip(self, branch: str) -> str:
        return self.git("rev-parse", f"refs/heads/{branch}")

    def _worktree_lock(self):
        """Every change to, and every read of, git's worktree list: ``git worktree list``
        fails when it reads while another job's ``worktree add`` writes."""
        return locked(self.common_dir / "pantheon-worktree.lock")

    def worktrees(self) -> dict[str, Path]:
        """Branch name -> the worktree where it is checked out."""
        with self._worktree_lock():
            return self._worktrees()

    def _worktrees(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        path: Path | None = None
        for line in self.git("worktree", "list", "--porcelain").splitlines():
            if line.startswith("worktree "):
                path = Path(line.removeprefix("worktree "))
            elif line.startswith("branch refs/heads/") and path is not None:
                out[line.removeprefix("branch refs/heads/")] = path
        return out

    def worktree(self, branch: str, base: str, path: Path) -> Path:
        """The job's worktree on ``branch`` (made from ``base``); an existing one is reused."""
        path = Path(path).resolve()
        with self._worktree_lock():
            if self._worktrees().get(branch) == path and path.is_dir():
                return path
            self._run("worktree", "prune", check=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.has_branch(branch):
                self.git("worktree", "add", str(path), branch)
            else:
                if not self.has_branch(base):
                    raise GitError(f"the target branch {base!r} does not exist in {self.path}")
                self.git("worktree", "add", "-b", branch, str(path), base)
        return path

    def commit_all(self, worktree: Path, message: str) -> str | None:
        """Commit every change in the worktree; None when there is nothing to commit."""
        self.git("add", "-A", cwd=worktree)
        if self._run("diff", "--cached", "--quiet", cwd=worktree, check=False).returncode == 0:
            return None
        return self._commit(worktree, message)

    def changed_files(self, branch: str, target: str) -> list[str]:
        base = self.git("merge-base", f"refs/heads/{target}", f"refs/heads/{branch}")
        out = self.git("diff", "--name-only", base, f"refs/heads/{branch}")
        return [line for line in out.splitlines() if line]

    def diff_stat(self, branch: str, target: str) -> tuple[list[str], int, int]:
        """The files ``branch`` changes since it left ``target``, and lines added and removed."""
        out = self.git("diff", "--numstat", f"refs/heads/{target}...refs/heads/{branch}")
        files, added, removed = [], 0, 0
        for line in out.splitlines():
            parts = line.split("\t", 2)
            if len(parts) != 3:
                continue
            files.append(parts[2])
            added += int(parts[0]) if parts[0].isdigit() else 0
            removed += int(parts[1]) if parts[1].isdigit() else 0
        return files, added, removed

    def diff(self, branch: str, target: str, *, limit: int = 200_000) -> str:
        """``branch``'s change since it left ``target``, as a unified diff."""
        text = self.git("diff", "--no-color", f"refs/heads/{target}...refs/heads/{branch}")
        return text if len(text) <= limit else text[:limit] + "\n[diff cut]"

    def rename_branch(self, old: str, new: str) -> None:
        with self._worktree_lock():  # git reads every worktree's HEAD to rename a branch
            self.git("branch", "-m", old, new)

    def delete_branch(self, name: str) -> None:
        """Delete a branch no worktree has checked out (git reads every worktree to check)."""
        with self._worktree_lock():
            self.git("branch", "-D", name)

    def merge(self, branch: str, into: str, message: str | None = None) -> MergeResult:
        """Merge ``branch`` into ``into``; on conflict nothing changes and the files are named."""
        message = message or f"Merge {branch} into {into}"
        with locked(self.common_dir / "pantheon-merge.lock"):
            if not self.has_branch(branch) or not self.has_branch(into):
                raise GitError(f"cannot merge {branch!r} into {into!r}: no such branch")
            if (
                self._run(
                    "merge-base",
                    "--is-ancestor",
                    f"refs/heads/{branch}",
                    f"refs/heads/{into}",
                    check=False,
                ).returncode
                == 0
            ):
                return MergeResult(True, self.tip(into), [], "already merged")
            checked_out = self.worktrees().get(into)
            if checked_out is not None:
                return self._merge_in(checked_out, branch, message)
            return self._merge_refs(branch, into, message)

    def _merge_in(self, worktree: Path, branch: str, message: str) -> MergeResult:
        status = self.git("status", "--porcelain", "--untracked-files=no", cwd=worktree)
        if status:
            return MergeResult(False, None, [], f"{worktree} has uncommitted changes")
        done = self._run(
            *AS_PANTHEON,
            "merge",
            "--no-ff",
            "-m",
            message,
            f"refs/heads/{branch}",
            cwd=worktree,
            check=False,
        )
        if done.returncode != 0:
            conflict = self.git("diff", "--name-only", "--diff-filter=U", cwd=worktree)
            self._run("merge", "--abort", cwd=worktree, check=False)
            files = [f for f in conflict.splitlines() if f]
            return MergeResult(False, None, files, "conflict" if files else done.stderr.strip())
        return MergeResult(True, self.git("rev-parse", "HEAD", cwd=worktree), [])

    def merge_tree(self, base: str, head: str) -> tuple[str | None, list[str]]:
        """``head`` merged onto ``base`` without a working tree: (the merged tree, []), or
        (None, the files in conflict)."""
        done = self._run("merge-tree", "--write-tree", "--name-only", base, head, check=False)
        lines = done.stdout.splitlines()
        if done.returncode == 1:
            files = []
            for line in lines[1:]:
                if not line.strip():
                    break
                files.append(line.strip())
            return None, files
        if done.returncode != 0:
            raise GitError(f"git merge-tree failed: {done.stderr.strip()[:500]}")
        return lines[0].strip(), []

    def _merge_refs(self, branch: str, into: str, message: str) -> MergeResult:
        old = self.tip(into)
        tree, conflict = self.merge_tree(f"refs/heads/{into}", f"refs/heads/{branch}")
        if tree is None:
            return MergeResult(False, None, conflict, "conflict")
        commit = self.git(
            *AS_PANTHEON,
            "commit-tree",
            tree,
            "-p",
            old,
            "-p",
            self.tip(branch),
            "-m",
            message,
        )
        self.git("update-ref", f"refs/heads/{into}", commit, old)
        return MergeResult(True, commit, [])

    def merged_diff(self, commit: str) -> str:
        """What a merge commit brought into its target: the diff from its first parent."""
        return self.git("diff", "--no-color", f"{commit}^1", commit)

    def revert(self, commit: str, into: str, message: str) -> str:
        """A new commit on ``into`` that undoes ``commit`` (a merge: against its first parent);
        GitError naming the files on a conflict, with nothing changed."""
        with locked(self.common_dir / "pantheon-merge.lock"):
            parents = self.git("rev-list", "--parents", "-n", "1", commit).split()[1:]
            mainline = ["-m", "1"] if len(parents) > 1 else []
            checked_out = self.worktrees().get(into)
            if checked_out is not None:
                if self.git("status", "--porcelain", "--untracked-files=no", cwd=checked_out):
                    raise GitError(f"{checked_out} has uncommitted changes")
                return self._revert_in(checked_out, commit, mainline, message)
            old = self.tip(into)
            with tempfile.TemporaryDirectory(prefix="pantheon-revert-") as tmp:
                work = Path(tmp) / "work"
                with self._worktree_lock():
                    self.git("worktree", "add", "--detach", str(work), old)
                try:
                    new = self._revert_in(work, commit, mainline, message)
                finally:
                    self.remove_worktree(work)
            self.git("update-ref", f"refs/heads/{into}", new, old)
            return new

    def _revert_in(self, work: Path, commit: str, mainline: list[str], message: str) -> str:
        done = self._run("revert", "--no-commit", *mainline, commit, cwd=work, check=False)
        if done.returncode != 0:
            conflict = self.git("diff", "--name-only", "--diff-filter=U", cwd=work)
            self._run("revert", "--abort", cwd=work, check=False)
            files = ", ".join(f for f in conflict.splitlines() if f)
            raise GitError(
                f"cannot revert {commit[:10]}: "
                + (f"conflict in {files}" if files else done.stderr.strip()[:300])
            )
        return self._commit(work, message)

    def _commit(self, cwd: Path, message: str) -> str:
        """Commit what is staged in ``cwd`` as Pantheon; the new commit."""
        self.git(*AS_PANTHEON, "commit", "-q", "-m", message, cwd=cwd)
        return self.git("rev-parse", "HEAD", cwd=cwd)

    def remove_worktree(self, path: Path) -> None:
        with self._worktree_lock():
            self._run("worktree", "remove", "--force", str(path), check=False)


def run_git(cwd: Path, *args: str) -> str:
    """``git`` in ``cwd`` as Pantheon (its name on any commit it makes); its output, or
    CalledProcessError."""
    return subprocess.run(
        ["git", *AS_PANTHEON, *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@dataclass
class JobWorkspace:
    """One job's branch and worktree of the target repository."""

    repo: GitRepo
    branch: str
    """``pantheon/<flow>/<job id>``."""
    target: str
    """The branch the merge gate merges into."""
    path: Path
    remote: str | None = None
    """The shared git remote whose ``target`` counts (several engine hosts); None: this
    clone's."""

    @classmethod
    def open(
        cls,
        repo_path: Path,
        *,
        flow: str,
        job_id: int,
        target: str,
        root: Path,
        remote: str | None = None,
        synced: bool = False,
    ):
        """The job's worktree on its branch, made from ``target`` when new; with a ``remote``,
        from the remote's latest target (fetched here unless the caller just did: ``synced``)."""
        repo = GitRepo(repo_path)
        branch = branch_name(flow, job_id)
        if remote and not synced and not repo.has_branch(branch):
            from pantheon.core.work.remote import sync_target

            sync_target(repo, remote, target)
        path = repo.worktree(branch, target, Path(root) / f"{flow}-{job_id:06d}")
        return cls(repo, branch, target, path, remote)

    def land(self, message: str) -> MergeResult:
        """Merge the job's branch into its target: this clone's, or the shared remote's."""
        if self.remote:
            from pantheon.core.work.remote import land

            return land(self.repo, self.branch, self.target, self.remote, message)
        return self.repo.merge(self.branch, self.target, message)

    def commit(self, message: str) -> str | None:
        return self.repo.commit_all(self.path, message)

    def diff(self, limit: int = 12000) -> str:
        """The job's change against the target, as the reviewers see it."""
        if self.dirty():
            self.commit("work in progress")
        text = self.repo.git(
            "diff", "--no-color", f"refs/heads/{self.target}...refs/heads/{self.branch}"
        )
        return text if len(text) <= limit else text[:limit] + "\n[diff cut]"

    def dirty(self) -> bool:
        return bool(self.repo.git("status", "--porcelain", cwd=self.path))

    def files(self) -> list[str]:
        return self.repo.changed_files(self.branch, self.target)

    def original(self, rel: str) -> str | None:
        """``rel`` as it was where the job's branch left the target (None: it did not exist)."""
        base = self.repo.git("merge-base", f"refs/heads/{self.target}", f"refs/heads/{self.branch}")
        try:
            return self.repo.git("show", f"{base.strip()}:{rel}")
        except GitError:
            return None
