"""Before a night drains: the sandbox checked, the models pulled, the work found in the
repository (or the demo one made), the queue filled. Progress goes to the callbacks a caller
gives (the command line prints it), so the same preparation serves any front."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pantheon.core.agents.builtin import default_registry
from pantheon.core.errors import FlowError
from pantheon.core.run.settings import NightSettings
from pantheon.core.store.control import ControlFile
from pantheon.core.store.queue import JobQueue

__all__ = ["Download", "Say", "check_sandbox", "engine_sandbox", "prepare_night", "use_queue"]

log = logging.getLogger("pantheon")

Say = Callable[[str], None]
"""A line of progress for the operator."""
Download = Callable[[int, int, str], None]
"""A model download's progress: bytes done, bytes in all, what."""


def check_sandbox(sandbox: bool, code_jobs: Callable[[], bool], none_left: str) -> None:
    """Log whether model-written code runs confined; SandboxError when it cannot be and
    ``code_jobs()`` says some will run, unless ``sandbox`` is off (or PANTHEON_SANDBOX=off)."""
    from pantheon.core.work.sandbox import (
        SANDBOX_ENV,
        Sandbox,
        SandboxError,
        allow_unconfined,
        missing_line,
        unconfined_allowed,
    )

    if not sandbox or unconfined_allowed():
        allow_unconfined()  # the night's own process and the engine's see it too
        log.warning(
            "no sandbox (%s): code jobs run unconfined, with the network and every file writable",
            "--no-sandbox" if not sandbox else f"{SANDBOX_ENV}=off",
        )
        return
    status = Sandbox.probe()
    if status.active:
        log.info("sandbox for model-written code: %s", status.reason)
        return
    if code_jobs():
        raise SandboxError(missing_line(status))
    log.warning("%s; %s", missing_line(status), none_left)


def use_queue(settings: NightSettings) -> None:
    """The queue the settings name becomes the artifacts' (``ARTIFACTS/queue.json``), and is
    reached once now: a server that cannot be reached is one clear error before any work."""
    from pantheon.core.store.queueurl import set_queue_url

    if settings.queue is not None:
        set_queue_url(settings.artifacts, settings.queue)
    with JobQueue(settings.artifacts):
        pass


def engine_sandbox(settings: NightSettings) -> None:
    """Before an engine drains the queue: no code job runs unconfined unless asked."""
    from pantheon.core.work.sandbox import code_jobs_pending

    def code_jobs() -> bool:
        with JobQueue(settings.artifacts) as queue:
            return code_jobs_pending(queue) > 0

    check_sandbox(
        settings.sandbox,
        code_jobs,
        "no code job is queued (one enqueued later fails until it is installed)",
    )


def _night_sandbox(settings: NightSettings) -> None:
    """At the night's start: a night with code jobs (or whose queue holds some) does not start
    without the sandbox, unless it is turned off."""
    from pantheon.core.run.demo import night_queued
    from pantheon.core.work.sandbox import code_jobs_pending

    def code_jobs() -> bool:
        with JobQueue(settings.artifacts) as queue:
            if night_queued(queue):
                return code_jobs_pending(queue) > 0
        return settings.work.code != 0

    check_sandbox(settings.sandbox, code_jobs, "this night has no code jobs")


def prepare_night(
    settings: NightSettings, *, say: Say | None = None, download: Download | None = None
) -> NightSettings:
    """The models, the repository and the queue; the settings with the night's repository."""
    from pantheon.core.model.files import CATALOG, ModelStore
    from pantheon.core.run.demo import enqueue_night, night_queued, prepare_demo_repo
    from pantheon.core.work.discover import check_git_repo

    work = settings.work
    if not work.demo and not work.repo:
        raise FlowError(
            "pantheon night needs --demo or --repo PATH",
            hint="--demo prepares the demo repository; --repo works on your git repository",
        )
    say = say or (lambda line: None)
    registry = default_registry()
    repo = check_git_repo(Path(work.repo)) if work.repo else None
    if repo is not None and work.remote:  # one clear error before anything is queued
        from pantheon.core.work.git import GitRepo
        from pantheon.core.work.remote import sync_target

        sync_target(GitRepo(repo), work.remote, "main")
    use_queue(settings)
    _night_sandbox(settings)
    with JobQueue(settings.artifacts) as queue:
        resuming = night_queued(queue)
    inputs = None
    if repo is not None and not resuming:
        inputs = _repo_inputs(settings, repo, say)
    if settings.serves:
        for model in dict.fromkeys([settings.models.model, settings.writers_model]):
            if model in CATALOG:
                ModelStore().pull(model, progress=download)
    if isinstance(settings.drain.concurrency, int):
        ControlFile(settings.artifacts).update(
            by="pantheon night", concurrency=settings.drain.concurrency
        )
    repo = repo or prepare_demo_repo(settings.artifacts / "demo-repo")
    if inputs is None and not resuming and work.code != 0:
        _check_tests_run(repo, None)
    if work.no_docs and inputs is not None:
        inputs = ([], inputs[1])
    with JobQueue(settings.artifacts) as queue:
        n_docs, n_code = enqueue_night(
            queue,
            registry,
            repo,
            docs=0 if work.no_docs else work.docs,
            code=work.code,
            inputs=inputs,
            remote=work.remote,
        )
        left = queue.pending()
    if n_docs or n_code:
        log.info("night on %s: %d docs and %d code job(s) queued", repo, n_docs, n_code)
    else:
        log.info("resuming the night on %s: %d job(s) left", repo, left)
    return settings.with_repo(repo)


def _check_tests_run(repo: Path, command: str | None) -> Any:
    """The repository's test command, checked once before the night: one clear error in place
    of every code job failing."""
    from pantheon.core.work.testcmd import check_runnable, resolve_test_command

    resolved = resolve_test_command(repo, command)
    check_runnable(resolved, repo)
    return resolved


def _discovery_line(repo: Path, found: Any) -> str:
    """What the traced run found, in one line."""
    if not found.failed:
        return f"{repo}: no failing tests ({found.passed} passed): no code jobs"
    files = len(found.jobs) + len(found.unplaced)
    placed = "on the code they run" if found.traced else "by traceback and imports"
    return (
        f"{repo}: {found.failed} failing test(s) in {files} file(s), {found.passed} passing; "
        f"{len(found.jobs)} code job(s), placed {placed}"
    )


def _repo_inputs(
    settings: NightSettings, repo: Path, say: Say
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The docs and code jobs found in the user's repository."""
    from pantheon.core.work.discover import docs_jobs, failing_test_jobs, read_tasks

    work = settings.work
    docs = [] if work.no_docs else docs_jobs(repo, work.docs_glob)
    extra = {"test_command": work.test_command} if work.test_command else {}
    if work.tasks is not None:
        code = [{**extra, **t} for t in read_tasks(work.tasks, repo)]
        if code:
            _check_tests_run(repo, work.test_command)
    elif work.code == 0:
        code = []
    else:
        command = _check_tests_run(repo, work.test_command)
        say(f"running the tests of {repo} ({command.text}) to find the failing ones ...")
        found = failing_test_jobs(repo, command)
        code = [{**job, **extra} for job in found.jobs]
        say(_discovery_line(repo, found))
        if found.failed and not found.traced:
            say(
                f"  the tests could not be traced ({found.untraced}): failing tests are placed "
                "by their tracebacks and imports"
            )
        if found.timed_out:
            say("  the suite ran past its time limit: these are the tests it finished")
        for rel in found.unplaced:
            say(
                f"  {rel}: its failing tests run no code of the repository outside the tests "
                "(give the file to fix with --tasks)"
            )
    if not docs and not code:
        raise FlowError(
            f"nothing to do in {repo}: no page of {work.docs_glob} lacks frontmatter and no test "
            "fails",
            hint="--docs-glob names other pages; --tasks FILE.jsonl names code tasks",
        )
    return docs, code
