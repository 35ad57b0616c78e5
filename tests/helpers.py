"""Helpers the tests share: a real git repository, written and committed."""

from __future__ import annotations

import sqlite3
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` as a fixed user; its output (CalledProcessError when it fails)."""
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def make_repo(repo: Path, files: dict[str, str]) -> Path:
    """A git repository on ``main`` holding ``files`` (relative path → text, dedented), in one
    commit."""
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def db_counts(artifacts: Path) -> Counter[str]:
    """Jobs by status, read straight from the queue's database."""
    db = sqlite3.connect(Path(artifacts) / "pantheon.db", timeout=10)
    try:
        return Counter(dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")))
    finally:
        db.close()


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05) -> None:
    """Wait until ``predicate()`` is true (a test waits on a condition, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError("timed out waiting")
