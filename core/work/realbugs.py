"""Real bugs for the night to find: one classic mutation planted in a real library, caught by
the library's own test suite.

A library here is a pure-Python project whose PyPI source distribution ships its tests
(:data:`LIBRARIES`, each pinned). :func:`fetch` downloads and unpacks it (``pip download``,
into a cache folder), :func:`lay_out` makes it a git repository the night can be pointed at
with ``--repo``, and :func:`plant` puts in bugs: a mutation (:mod:`pantheon.core.work.codecorpus`'s
operators) in a function that the suite's passing tests run, kept when at least one test that
passed on the original fails on the mutant. Everything is deterministic from the seed. Each
:class:`RealBug` records where the bug is (file, function, line) and which tests it fails, so
:func:`bug_repo` gives the library with that one bug committed, and a bench can ask whether
the night placed, fixed and merged it without breaking another test (``bench/realbugs.py``).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pantheon.core.errors import PantheonError
from pantheon.core.work.codecorpus import mutants_of
from pantheon.core.work.git import run_git
from pantheon.core.work.localize import code_units
from pantheon.core.work.suite import CoverageMap, run_suite, test_file_of
from pantheon.core.work.testcmd import TestCommand, is_test_file

__all__ = [
    "LIBRARIES",
    "Library",
    "RealBug",
    "bug_repo",
    "fetch",
    "lay_out",
    "plant",
    "read_bugs",
    "write_bugs",
]

SEED = 20261207


class CorpusError(PantheonError):
    """A library that cannot be fetched or laid out."""

    title = "Corpus error"


@dataclass(frozen=True)
class Library:
    name: str
    """Its name on PyPI."""
    version: str
    keep: tuple[str, ...]
    """What of the unpacked sdist the repository holds (the package and its tests)."""


LIBRARIES = {
    lib.name: lib
    for lib in (
        Library("toolz", "1.0.0", ("toolz", "tlz")),
        Library("more-itertools", "10.5.0", ("more_itertools", "tests")),
    )
}


@dataclass(frozen=True)
class RealBug:
    library: str
    path: str
    """The mutated file, relative to the repository."""
    function: str
    """The qualified name of the mutated function."""
    line: int
    operator: str
    before: str
    """The mutated expression as it was."""
    after: str
    old_lines: str = ""
    """The whole lines the mutation changes, as they were, and as it leaves them."""
    new_lines: str = ""
    failing: list[str] = field(default_factory=list)
    """The tests that pass on the original and fail with the bug."""

    @property
    def id(self) -> str:
        return f"{self.library}:{self.path}:{self.line}:{self.operator}"


def fetch(lib: Library, cache: Path) -> Path:
    """The unpacked source distribution of ``lib`` (downloaded once into ``cache``)."""
    cache = Path(cache)
    folder = cache / f"{lib.name}-{lib.version}"
    if folder.is_dir():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    done = subprocess.run(
        [*pip, "-q", "-d", str(cache), f"{lib.name}=={lib.version}"],
        capture_output=True,
        text=True,
    )
    sdists = sorted(cache.glob(f"{lib.name.replace('-', '[-_]')}-{lib.version}.tar.gz"))
    if done.returncode != 0 or not sdists:
        raise CorpusError(
            f"cannot download {lib.name}=={lib.version}: {done.stderr.strip()[-300:]}"
        )
    with tarfile.open(sdists[0]) as tar:
        tar.extractall(cache / ".unpack", filter="data")
    unpacked = next((cache / ".unpack").iterdir())
    unpacked.rename(folder)
    shutil.rmtree(cache / ".unpack", ignore_errors=True)
    return folder


def lay_out(lib: Library, source: Path, dest: Path) -> Path:
    """``dest``: a git repository on ``main`` holding the library's package and its tests."""
    dest = Path(dest)
    if (dest / ".git").exists():
        return dest
    dest.mkdir(parents=True)
    for name in lib.keep:
        src = Path(source) / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            shutil.copyfile(src, dest / name)
    (dest / "README.md").write_text(
        f"# {lib.name} {lib.version}\n\nThe library as its source distribution ships it.\n"
    )
    run_git(dest, "init", "-q", "-b", "main")
    run_git(dest, "add", "-A")
    run_git(dest, "commit", "-q", "-m", f"{lib.name} {lib.version}")
    return dest


def _sites(repo: Path, cov: CoverageMap, passing: set[str]) -> Iterator[tuple[str, str, object]]:
    """(path, function, mutant) for every mutation inside a function the passing tests run."""
    for path in sorted(cov.lines):
        if is_test_file(path):
            continue
        source = (repo / path).read_text(encoding="utf-8")
        lines = source.splitlines()
        try:
            units = code_units(source)
        except SyntaxError:
            continue
        for mutant in mutants_of(source, 1):
            if not lines[mutant.line - 1].isascii():
                continue  # the mutation works on byte offsets: leave such lines be
            inner = [u for u in units if u[1] <= mutant.line <= u[2]]
            if not inner:
                continue
            name, _, _ = max(inner, key=lambda u: u[1])
            ran = cov.lines[path].get(mutant.line, frozenset()) & passing
            if ran:
                yield path, name, mutant


def plant(
    lib: Library,
    repo: Path,
    command: TestCommand,
    *,
    count: int,
    seed: int = SEED,
    per_function: int = 1,
    timeout_s: float = 300.0,
    progress: Callable[[str], None] | None = None,
) -> list[RealBug]:
    """Up to ``count`` bugs planted in ``repo`` (left as it was), at most ``per_function`` in
    one function, each failing at least one test that passes on the original."""
    repo = Path(repo)
    base = run_suite(command, repo, timeout_s=timeout_s, cover=True)
    if base.coverage is None:
        raise CorpusError(f"the suite of {lib.name} could not be traced: {base.untraced}")
    passing = {t.test for t in base.passed}
    sites = list(_sites(repo, base.coverage, passing))
    random.Random(seed).shuffle(sites)
    bugs: list[RealBug] = []
    per: dict[tuple[str, str], int] = {}
    tried = 0
    for path, name, mutant in sites:
        if len(bugs) >= count:
            break
        if per.get((path, name), 0) >= per_function:
            continue
        tests = base.coverage.lines[path][mutant.line] & passing  # type: ignore[attr-defined]
        files = sorted({test_file_of(t) for t in tests})
        target = repo / path
        original = target.read_text(encoding="utf-8")
        target.write_text(mutant.source, encoding="utf-8")  # type: ignore[attr-defined]
        try:
            run = run_suite(command, repo, files, timeout_s=timeout_s)
        finally:
            target.write_text(original, encoding="utf-8")
        tried += 1
        failing = sorted(t.test for t in run.failed if t.test in passing)
        if progress is not None:
            progress(f"{lib.name}: {len(bugs)} kept of {tried} tried")
        if not failing or run.timed_out:
            continue
        per[(path, name)] = per.get((path, name), 0) + 1
        bugs.append(
            RealBug(
                lib.name,
                path,
                name,
                mutant.line,  # type: ignore[attr-defined]
                mutant.operator,  # type: ignore[attr-defined]
                mutant.before,  # type: ignore[attr-defined]
                mutant.after,  # type: ignore[attr-defined]
                *_changed_lines(original, mutant.source),  # type: ignore[attr-defined]
                failing,
            )
        )
    return bugs


def _changed_lines(before: str, after: str) -> tuple[str, str]:
    """The lines from the first that differs to the last that differs, in each text."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return "".join(a[head : len(a) - tail]), "".join(b[head : len(b) - tail])


def bug_repo(repo: Path, bug: RealBug, dest: Path) -> Path:
    """A clone of the library's repository at ``dest`` with ``bug`` committed on ``main``."""
    dest = Path(dest)
    subprocess.run(
        ["git", "clone", "-q", "-b", "main", str(repo), str(dest)], check=True, capture_output=True
    )
    target = dest / bug.path
    lines = target.read_text(encoding="utf-8").splitlines(keepends=True)
    old = bug.old_lines.splitlines(keepends=True)
    at = bug.line - 1
    if lines[at : at + len(old)] != old:
        raise CorpusError(f"{bug.id}: line {bug.line} of {bug.path} is not what it changes")
    lines[at : at + len(old)] = bug.new_lines.splitlines(keepends=True)
    target.write_text("".join(lines), encoding="utf-8")
    run_git(dest, "commit", "-q", "-am", f"one bug: {bug.id}")
    return dest


def write_bugs(path: Path, bugs: list[RealBug]) -> None:
    Path(path).write_text("".join(json.dumps(asdict(b)) + "\n" for b in bugs), encoding="utf-8")


def read_bugs(path: Path) -> list[RealBug]:
    return [
        RealBug(**json.loads(line))
        for line in Path(path).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
