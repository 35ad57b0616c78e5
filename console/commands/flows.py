"""What this install can run: ``flows check``, ``flows list`` and ``agents``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pantheon.core import FlowError, default_registry, load_flow


def add_flows(sub: Any) -> None:
    p = sub.add_parser("flows", help="check or list flow files")
    flows_sub = p.add_subparsers(dest="flows_command", metavar="ACTION", required=True)
    fc = flows_sub.add_parser("check", help="check flow files; exit 1 if any has a problem")
    fc.add_argument("files", nargs="+", type=Path, metavar="FILE")
    flows_sub.add_parser("list", help="the flows shipped with Pantheon and in ./flows")


def add_agents(sub: Any) -> None:
    p = sub.add_parser("agents", help="list the agents this install knows")
    p.add_argument("--json", action="store_true", help="with their schemas, as JSON")


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
