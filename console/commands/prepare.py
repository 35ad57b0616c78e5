"""Before a night: the models pulled, the work found in the repository, the queue filled."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pantheon.console.commands.common import progress_printer, sandbox_gate
from pantheon.core import FlowError, JobQueue, default_registry
from pantheon.core.store.control import ControlFile

log = logging.getLogger("pantheon")


def code_model(args: argparse.Namespace) -> str | None:
    """The model of the writers' own server, or None when they share the night's."""
    model = getattr(args, "code_model", None)
    if args.endpoint or not model or model == "same" or model == args.model:
        return None
    return model


def _night_sandbox(args: argparse.Namespace) -> None:
    """At the night's start: a night with code jobs (or whose queue holds some) does not start
    without the sandbox, unless --no-sandbox."""
    from pantheon.core.run.demo import night_queued
    from pantheon.core.work.sandbox import code_jobs_pending

    def code_jobs() -> bool:
        with JobQueue(args.artifacts) as queue:
            if night_queued(queue):
                return code_jobs_pending(queue) > 0
        return args.code != 0

    sandbox_gate(args, code_jobs, "this night has no code jobs")


def prepare_night(args: argparse.Namespace) -> Path:
    """The model, the repository and the queue, with progress on the terminal."""
    if not args.demo and not args.repo:
        raise FlowError(
            "pantheon night needs --demo or --repo PATH",
            hint="--demo prepares the demo repository; --repo works on your git repository",
        )
    from pantheon.core.model.files import CATALOG, ModelStore
    from pantheon.core.run.demo import enqueue_night, night_queued, prepare_demo_repo
    from pantheon.core.work.discover import check_git_repo

    registry = default_registry()
    repo = check_git_repo(Path(args.repo)) if args.repo else None
    _night_sandbox(args)
    with JobQueue(args.artifacts) as queue:
        resuming = night_queued(queue)
    inputs = None
    if repo is not None and not resuming:
        inputs = _repo_inputs(args, repo)
    if not args.endpoint:
        for model in dict.fromkeys([args.model, code_model(args)]):
            if model in CATALOG:
                ModelStore().pull(model, progress=progress_printer())
    if isinstance(args.concurrency, int):
        ControlFile(args.artifacts).update(by="pantheon night", concurrency=args.concurrency)
    repo = repo or prepare_demo_repo(args.artifacts / "demo-repo")
    if inputs is None and not resuming and args.code != 0:
        _check_tests_run(repo, None)
    if args.no_docs and inputs is not None:
        inputs = ([], inputs[1])
    with JobQueue(args.artifacts) as queue:
        n_docs, n_code = enqueue_night(
            queue,
            registry,
            repo,
            docs=0 if args.no_docs else args.docs,
            code=args.code,
            inputs=inputs,
        )
        left = queue.pending()
    if n_docs or n_code:
        log.info("night on %s: %d docs and %d code job(s) queued", repo, n_docs, n_code)
    else:
        log.info("resuming the night on %s: %d job(s) left", repo, left)
    return repo


def _check_tests_run(repo: Path, command: str | None):
    """The repository's test command, checked once before the night: one clear error in place
    of every code job failing."""
    from pantheon.core.work.testcmd import check_runnable, resolve_test_command

    resolved = resolve_test_command(repo, command)
    check_runnable(resolved, repo)
    return resolved


def _discovery_line(repo: Path, found) -> str:
    """What the traced run found, in one line."""
    if not found.failed:
        return f"{repo}: no failing tests ({found.passed} passed): no code jobs"
    files = len(found.jobs) + len(found.unplaced)
    placed = "on the code they run" if found.traced else "by traceback and imports"
    return (
        f"{repo}: {found.failed} failing test(s) in {files} file(s), {found.passed} passing; "
        f"{len(found.jobs)} code job(s), placed {placed}"
    )


def _repo_inputs(args: argparse.Namespace, repo: Path):
    """The docs and code jobs found in the user's repository."""
    from pantheon.core.work.discover import docs_jobs, failing_test_jobs, read_tasks

    docs = [] if args.no_docs else docs_jobs(repo, args.docs_glob)
    extra = {"test_command": args.test_command} if args.test_command else {}
    if args.tasks is not None:
        code = [{**extra, **t} for t in read_tasks(args.tasks, repo)]
        if code:
            _check_tests_run(repo, args.test_command)
    elif args.code == 0:
        code = []
    else:
        command = _check_tests_run(repo, args.test_command)
        print(
            f"running the tests of {repo} ({command.text}) to find the failing ones ...",
            file=sys.stderr,
        )
        found = failing_test_jobs(repo, command)
        code = [{**job, **extra} for job in found.jobs]
        print(_discovery_line(repo, found), file=sys.stderr)
        if found.failed and not found.traced:
            print(
                f"  the tests could not be traced ({found.untraced}): failing tests are placed "
                "by their tracebacks and imports",
                file=sys.stderr,
            )
        if found.timed_out:
            print(
                "  the suite ran past its time limit: these are the tests it finished",
                file=sys.stderr,
            )
        for rel in found.unplaced:
            print(
                f"  {rel}: its failing tests run no code of the repository outside the tests "
                "(give the file to fix with --tasks)",
                file=sys.stderr,
            )
    if not docs and not code:
        raise FlowError(
            f"nothing to do in {repo}: no page of {args.docs_glob} lacks frontmatter and no test "
            "fails",
            hint="--docs-glob names other pages; --tasks FILE.jsonl names code tasks",
        )
    return docs, code
