"""``pantheon serve``: start, supervise, check or stop the local model server."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pantheon.console.commands.common import artifacts_arg, speculative_arg
from pantheon.core import ConfigError, ModelServerError

log = logging.getLogger("pantheon")


def add_serve(sub: Any) -> None:

    p = sub.add_parser(
        "serve",
        help="start, check or stop the local model server",
        description=textwrap.dedent(
            """\
            Start the local model server on loopback and supervise it (start it again if it
            dies), until Ctrl-C. The embedded default is llama.cpp's llama-server with parallel
            slots (continuous batching) and Prometheus metrics; --backend openvino starts
            Pantheon's own OpenAI-compatible server over OpenVINO GenAI (CPU; pip install
            '.[openvino]'; a model `pantheon models` lists for openvino, no LoRA adapters);
            --backend vllm starts `vllm serve` on a GPU host where vLLM is installed. Its pid,
            port and log live in ARTIFACTS/server/."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--detach", action="store_true", help="start in the background, return when ready"
    )
    what.add_argument("--status", action="store_true", help="is it running and healthy?")
    what.add_argument("--stop", action="store_true", help="stop the running server")
    p.add_argument("--backend", choices=["llama.cpp", "openvino", "vllm"], default="llama.cpp")
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
    speculative_arg(p)
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
    artifacts_arg(p)


def _server_config(args: argparse.Namespace):
    from pantheon.core.model.guard import is_local_address
    from pantheon.core.model.server import ServerConfig
    from pantheon.core.run.connect import adapter_files

    try:
        local = is_local_address(socket.gethostbyname(args.host))
    except (OSError, ValueError):
        local = False
    if not local:
        raise ModelServerError(
            f"--host {args.host} is not a loopback or private address; the model server stays "
            "on the operator's machines"
        )
    promoted = (
        []
        if not args.registry_adapters
        else adapter_files(
            args.artifacts, "vllm" if args.backend == "vllm" else "llama.cpp", args.model
        )
    )
    if args.backend == "openvino" and promoted:
        from pantheon.core.model.ovserve import not_served

        log.warning("%s", not_served(promoted))
        promoted = []
    try:
        return ServerConfig(
            backend=args.backend,
            model=args.model,
            host=args.host,
            port=args.port,
            parallel=args.parallel,
            ctx_per_slot=args.ctx,
            threads=args.threads,
            speculative=args.speculative,
            adapters=[str(Path(a).resolve()) for a in args.adapter] + promoted,
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
