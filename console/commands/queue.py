"""The queue and the engine that drains it: ``enqueue``, ``engine``, ``control``, ``retry``."""

from __future__ import annotations

import argparse
import json
import logging
import textwrap
from pathlib import Path
from typing import Any

from pantheon.console.commands.common import (
    artifacts_arg,
    gate_args,
    model_endpoint_args,
    sandbox_arg,
)
from pantheon.console.commands.settings_args import night_settings, settings_args
from pantheon.core import (
    FlowError,
    JobQueue,
    QueueError,
    default_registry,
    enqueue,
    load_flow,
    locate_flow,
    read_inputs_jsonl,
)
from pantheon.core.store.control import ControlFile

log = logging.getLogger("pantheon")


def add_engine(sub: Any) -> None:
    p = sub.add_parser(
        "engine",
        help="drain the queue, headless",
        description=textwrap.dedent(
            """\
            Drain the queue, headless. Reads control.json on every tick, so concurrency and the
            queue pause can change while it runs. Ctrl-C (or SIGTERM) stops gracefully: the nodes
            in flight finish and unfinished jobs go back to the queue; a second Ctrl-C cancels
            them, and they resume from their last finished node."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--until-empty", action="store_true", help="stop when the queue is empty")
    p.add_argument(
        "--serve",
        action="store_true",
        help="serve the models here, as a night does (--model, --code-model, --servers, "
        "--backend), instead of using --endpoint or the server `pantheon serve` runs",
    )
    p.add_argument(
        "--model",
        default=None,
        help="with --serve: the model the embedded server runs (default: qwen2.5-coder-0.5b)",
    )
    p.add_argument(
        "--code-model",
        default=None,
        metavar="M",
        help="with --serve: the writers' model, on a second server ('same' for --model's)",
    )
    p.add_argument(
        "--repo",
        metavar="PATH",
        help="this host's clone of the jobs' repository, where it is not at the path the jobs "
        "name (engines on several hosts sharing a remote)",
    )
    p.add_argument(
        "--until",
        metavar="HH:MM",
        help="be done by then: no job starts that the time a job has taken so far says cannot "
        "finish by then, and the engine stops when its last job is done",
    )
    p.add_argument(
        "--join",
        action="store_true",
        help="drain alongside the night or engine already running on ARTIFACTS (refused "
        "otherwise, with its pid)",
    )
    p.add_argument(
        "--concurrency", type=int, metavar="C", help="set c in control.json before starting"
    )
    p.add_argument(
        "--lease",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a claimed job stays ours without renewal (default: 60)",
    )
    p.add_argument(
        "--fsync",
        action="store_true",
        help="flush every run artifact to disk before renaming it (survives power cuts; slower)",
    )
    p.add_argument("--tick", type=float, default=0.25, metavar="SECONDS", help=argparse.SUPPRESS)
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve the engine's figures in the Prometheus text format on 127.0.0.1:PORT",
    )
    p.add_argument(
        "--sample-every",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between samples in ARTIFACTS/metrics/engine.jsonl (default: 2)",
    )
    gate_args(p)
    model_endpoint_args(p)
    sandbox_arg(p)
    settings_args(p)
    artifacts_arg(p)


def add_enqueue(sub: Any) -> None:
    p = sub.add_parser(
        "enqueue",
        help="add jobs of a flow to the queue",
        description="Add jobs of a flow to the queue. Every input is checked against the flow "
        "first; when one does not fit, nothing is enqueued.",
    )
    p.add_argument("flow", help="a flow file, or the name of a flow in ./flows or shipped ones")
    p.add_argument("--input", metavar="JSON", help="one job's input as a JSON object")
    p.add_argument(
        "--inputs", type=Path, metavar="FILE", help="a JSON Lines file: one job input per line"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set one input field (repeatable; VALUE is parsed as JSON when it can be)",
    )
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default: 0)")
    p.add_argument(
        "--queue",
        metavar="URL",
        help="the queue to add them to: a PostgreSQL URL (remembered in ARTIFACTS/queue.json), "
        "or sqlite; default: the one ARTIFACTS names, else its own file",
    )
    artifacts_arg(p)


def add_control(sub: Any) -> None:
    p = sub.add_parser(
        "control",
        help="change the operator controls (control.json)",
        description="Change the operator controls in control.json; a running engine takes them "
        "on its next tick. With no option, print them.",
    )
    p.add_argument("--concurrency", type=int, metavar="C", help="jobs at once")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pause-queue", metavar="REASON", nargs="?", const="", help="claim no new jobs")
    g.add_argument("--resume-queue", action="store_true")
    g2 = p.add_mutually_exclusive_group()
    g2.add_argument("--pause-merges", metavar="REASON", nargs="?", const="", help="merge nothing")
    g2.add_argument("--resume-merges", action="store_true")
    artifacts_arg(p)


def add_retry(sub: Any) -> None:
    p = sub.add_parser(
        "retry",
        help="put failed jobs back in the queue",
        description="Put failed jobs back in the queue; nodes that finished are not run again.",
    )
    p.add_argument("jobs", nargs="*", type=int, metavar="JOB", help="job ids (default: all failed)")
    artifacts_arg(p)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cmd_enqueue(args: argparse.Namespace) -> int:
    registry = default_registry()
    flow = load_flow(locate_flow(args.flow), registry)
    inputs: list[dict[str, Any]] = []
    if args.inputs:
        inputs.extend(read_inputs_jsonl(args.inputs))
    if args.input is not None or args.set:
        try:
            one = json.loads(args.input) if args.input is not None else {}
        except json.JSONDecodeError as exc:
            raise FlowError(
                f"--input is not valid JSON: {exc.msg} (at column {exc.colno})"
            ) from None
        if not isinstance(one, dict):
            raise FlowError('--input must be a JSON object, e.g. \'{"text": "hello"}\'')
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise FlowError(f"--set {item!r}: write KEY=VALUE")
            one[key] = _parse_value(value)
        inputs.append(one)
    if not inputs:
        raise FlowError(
            "no input given", hint="use --input JSON, --set KEY=VALUE or --inputs FILE.jsonl"
        )
    if args.queue is not None:
        from pantheon.core.store.queueurl import check_queue_url, set_queue_url

        set_queue_url(args.artifacts, check_queue_url(args.queue))
    with JobQueue(args.artifacts) as queue:
        ids = enqueue(queue, flow, inputs, priority=args.priority)
    span = f"{ids[0]}" if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"
    print(f"enqueued {len(ids)} job(s) of flow {flow.name!r} (ids {span}) in {args.artifacts}")
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    from pantheon.core.run.night import run_night
    from pantheon.core.run.nightlock import NightRunning, night_holder
    from pantheon.core.run.prepare import engine_sandbox, use_queue

    settings = night_settings(args, "engine")
    if args.print_settings:
        print(settings.as_json())
        return 0
    if not settings.join:  # the holder's pid, before anything is checked or served
        holder = night_holder(settings.artifacts)
        if holder is not None:
            raise NightRunning(settings.artifacts, holder)
    use_queue(settings)
    engine_sandbox(settings)
    registry = default_registry()
    for problem in registry.load_errors:
        log.warning("agent plugin not loaded: %s", problem)
    return run_night(settings).exit_code


def cmd_control(args: argparse.Namespace) -> int:
    control_file = ControlFile(args.artifacts)
    changes: dict[str, Any] = {}
    if args.concurrency is not None:
        changes["concurrency"] = args.concurrency
    if args.pause_queue is not None:
        changes.update(queue_paused=True, queue_paused_reason=args.pause_queue or "by the operator")
    if args.resume_queue:
        changes["queue_paused"] = False
    if args.pause_merges is not None:
        changes.update(
            merges_paused=True, merges_paused_reason=args.pause_merges or "by the operator"
        )
    if args.resume_merges:
        changes["merges_paused"] = False
    if changes:
        args.artifacts.mkdir(parents=True, exist_ok=True)
        control = control_file.update(by="pantheon control", **changes)
    else:
        control = control_file.load_strict()
    print(json.dumps(control.model_dump(mode="json"), indent=2))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    with JobQueue(args.artifacts, create=False) as queue:
        if args.jobs:
            jobs = [queue.get(i) for i in args.jobs]  # QueueError names a job that is not there
            not_failed = [f"job {j.id} is {j.status}" for j in jobs if j.status != "failed"]
            if not_failed:
                raise QueueError(
                    f"nothing retried: {', '.join(not_failed)}; only failed jobs go back in "
                    "the queue"
                )
        n = queue.retry_failed(args.jobs or None)
    print(f"{n} failed job(s) back in the queue")
    return 0
