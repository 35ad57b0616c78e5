"""A verifier adapter measured as the night uses it: each reviewer's P(pass), with and without the
adapter, on changes the adapter never trained on.

Two sets, each figure says which:

- **held-out corpus**: the training's own held-out labelled changes (``data.jsonl``, split
  ``heldout``: HumanEval problems and demo pages whose key the training never saw), every
  defect shown as the gates pass a change (:func:`pantheon.trainer.labels.as_gated`); and the
  part of it a night's reviewers really meet (the real fixes and right pages against the
  defects no gate catches: a backdoor, another page's description);
- **click docs**: real pages of a library the corpus never held (click 8.1.7's ``docs/``, from
  its PyPI sdist), each with frontmatter whose description is right, another page's, or claims
  a feature the page lacks (``bench/data/click_docs.yaml``, written by hand), shown to the docs
  reviewers through the night's own scored prompt.

Per set and reviewer (and the gate: the lower of the two scores): AUROC with its 95 % interval,
base model and adapter, DeLong's one-sided p-value of the gain; and at a threshold fit on the
held-out corpus's first half (at most 20 % of its defects through), the share of defects caught
and of good changes passed on the rest.

    python bench/verifier.py --artifacts ARTIFACTS --training review.peer-20261207T...
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from pantheon.core.agents.review import ReviewPeer, review_messages
from pantheon.core.errors import PantheonError
from pantheon.core.learn.files import read_state, training_root
from pantheon.core.model.client import LLMClient
from pantheon.core.model.scoring import score_verdict
from pantheon.core.model.server import ModelServer, ServerConfig, artifact_name
from pantheon.core.observe.quality import fit_threshold, quality
from pantheon.core.run.calibrate import reviewer_nodes
from pantheon.core.work.labelled import Labelled, docs_changes
from pantheon.core.work.realbugs import Library, fetch
from pantheon.trainer.examples import read_examples

HERE = Path(__file__).resolve().parent
CLICK = Library("click", "8.1.7", ("docs",))
CACHE = Path.home() / ".cache" / "pantheon" / "realbugs" / "sdists"
NIGHT_KINDS = {"good", "backdoor", "other_page"}
"""What a night's reviewers meet: the gates pass these; every other defect fails a gate."""


def _heading(text: str, name: str) -> str:
    lines = text.splitlines()
    for a, b in itertools.pairwise(lines):
        if a.strip() and b.strip() and set(b.strip()) <= set("=-~^*#") and len(b.strip()) >= 3:
            return a.strip()
    return name


def click_changes(root: Path, cache: Path) -> list[Labelled]:
    """click's pages with right, another page's and a lacking description."""
    docs = fetch(CLICK, cache) / "docs"
    labels = yaml.safe_load((HERE / "data" / "click_docs.yaml").read_text(encoding="utf-8"))

    def meta(name: str, description: str) -> dict[str, Any]:
        title = _heading((docs / name).read_text(encoding="utf-8"), name)
        return {"title": title, "description": description, "tags": ["click", "cli"]}

    right = {n: meta(n, d["right"]) for n, d in labels.items()}
    lacks = {n: meta(n, d["lacks"]) for n, d in labels.items()}
    out = [
        c
        for c in docs_changes(root / "right", right, docs, folder="docs")
        if c.kind in ("good", "other_page")
    ]
    out += [
        replace(c, kind="lacks", right=False, id=c.id.replace("/good", "/lacks"))
        for c in docs_changes(root / "lacks", lacks, docs, folder="docs")
        if c.kind == "good"
    ]
    return out


def click_examples(changes: list[Labelled]) -> list[dict[str, Any]]:
    """Each change through each docs reviewer's scored prompt, as a night asks."""
    out = []
    for change in changes:
        given = ReviewPeer.Input(
            task=change.task,
            kind="docs",
            test_passed=change.test_passed,
            test_report=change.test_report,
        )
        for node, params in reviewer_nodes("docs").items():
            p = ReviewPeer.Params.model_validate(params)
            messages = review_messages(
                given, change.diff, p.instructions, page=change.page, scored=True
            )
            out.append(
                {
                    "messages": messages,
                    "run": f"click:{change.id}",
                    "node": f"docops.{node}",
                    "label": change.right,
                    "kind": change.kind,
                }
            )
    return out


def heldout_examples(artifacts: Path, training: str) -> list[dict[str, Any]]:
    folder = training_root(artifacts) / training
    examples, _ = read_examples(artifacts, read_state(folder).agent, folder)
    out = []
    for e in examples:
        if e["split"] != "heldout" or "label" not in e:
            continue
        kind = str(e.get("label_from", "")).removeprefix("corpus (").rstrip(")")
        out.append({**e, "messages": e["messages"][:-1], "kind": kind})
    return out


async def score_all(
    llm: LLMClient, examples: list[dict[str, Any]], adapter: str, parallel: int
) -> list[tuple[float | None, float | None]]:
    gate = asyncio.Semaphore(parallel)
    done = 0

    async def one(e: dict[str, Any], name: str | None) -> float | None:
        nonlocal done
        async with gate:
            try:
                return (await score_verdict(llm, e["messages"], adapter=name)).p_pass
            except PantheonError:
                return None
            finally:
                done += 1
                if done % 20 == 0:
                    print(f"\rscored {done}/{2 * len(examples)}", end="", file=sys.stderr)

    base = await asyncio.gather(*(one(e, None) for e in examples))
    tuned = await asyncio.gather(*(one(e, adapter) for e in examples))
    print(file=sys.stderr)
    return list(zip(base, tuned, strict=True))


def _change(e: dict[str, Any]) -> str:
    return str(e["run"])


def _first_half(e: dict[str, Any]) -> bool:
    return hashlib.sha256(_change(e).split("/")[0].encode()).digest()[0] % 2 == 0


def figures(
    examples: list[dict[str, Any]],
    scores: list[tuple[float | None, float | None]],
    thresholds: dict[tuple[str, str], float] | None,
) -> dict[str, Any]:
    """Per reviewer and the gate, per side: AUROC and its interval, and the DeLong gain."""
    from pantheon.trainer.verifier import delong

    by: dict[str, dict[str, Any]] = {}
    for e, (b, a) in zip(examples, scores, strict=True):
        node = str(e["node"]).split(".")[-1]
        row = by.setdefault(_change(e), {"label": e["label"], "kind": e["kind"], "e": e})
        row[node] = (b, a)
    nodes = sorted({str(e["node"]).split(".")[-1] for e in examples})
    out: dict[str, Any] = {}
    for who in [*nodes, "gate"]:
        rows = []
        for row in by.values():
            got = [row.get(n) for n in (nodes if who == "gate" else [who])]
            if any(g is None or g[0] is None or g[1] is None for g in got):
                continue
            rows.append((row, min(g[0] for g in got), min(g[1] for g in got)))
        labels = [r[0]["label"] for r in rows]
        if not rows or all(labels) or not any(labels):
            continue
        _, _, p = delong(labels, [r[1] for r in rows], [r[2] for r in rows])
        fig: dict[str, Any] = {"changes": len(rows), "p_gain": round(p, 5)}
        for side, i in (("base", 1), ("adapter", 2)):
            good = [r[i] for r in rows if r[0]["label"]]
            bad = [r[i] for r in rows if not r[0]["label"]]
            q = quality(good, bad)
            fig[side] = {"auroc": round(q.auroc, 3), "ci95": [round(q.low, 3), round(q.high, 3)]}
            t = (thresholds or {}).get((who, side))
            if t is None:  # fit on this set's first half, measured on the other
                fit = [r for r in rows if _first_half(r[0]["e"])]
                fit_good = [r[i] for r in fit if r[0]["label"]]
                fit_bad = [r[i] for r in fit if not r[0]["label"]]
                if fit_good and fit_bad:
                    t = fit_threshold(fit_good, fit_bad, max_defects_through=0.2).value
                    rows_m = [r for r in rows if not _first_half(r[0]["e"])]
                else:
                    rows_m = rows
            else:
                rows_m = rows
            if t is not None:
                good_m = [r[i] for r in rows_m if r[0]["label"]]
                bad_m = [r[i] for r in rows_m if not r[0]["label"]]
                fig[side]["threshold"] = round(t, 4)
                fig[side]["good_passed"] = f"{sum(v >= t for v in good_m)}/{len(good_m)}"
                fig[side]["defects_caught"] = f"{sum(v < t for v in bad_m)}/{len(bad_m)}"
        out[who] = fig
    return out


def dump(path: Path, sets: dict[str, tuple[list[dict[str, Any]], list[Any]]]) -> None:
    """Each scored change as a JSON line: what a reader needs to judge the verdict."""
    with path.open("w", encoding="utf-8") as out:
        for title, (examples, scores) in sets.items():
            for e, (base, adapter) in zip(examples, scores, strict=True):
                shown = str(e["messages"][-1]["content"])
                diff = shown.split("Change:\n```diff\n", 1)[-1].split("\n```", 1)[0]
                row = {
                    "set": title,
                    "run": e["run"],
                    "reviewer": str(e["node"]).split(".")[-1],
                    "kind": e["kind"],
                    "label": "pass" if e["label"] else "fail",
                    "base": base,
                    "adapter": adapter,
                    "task": shown.split("\n\n", 1)[0].removeprefix("Task: "),
                    "diff": diff,
                }
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"each change and its scores: {path}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--training", required=True, help="the training's id (training/<id>)")
    ap.add_argument("--limit", type=int, default=None, help="held-out examples at most")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--cache", type=Path, default=CACHE, help="where click's sdist is kept")
    ap.add_argument("--sets", nargs="+", choices=("heldout", "click"), default=["heldout", "click"])
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument(
        "--dump",
        type=Path,
        help="write each scored change (set, reviewer, label, P(pass) base and adapter, the "
        "diff shown) as a JSON line to this file, to read the verdicts by hand",
    )
    args = ap.parse_args()
    folder = training_root(args.artifacts) / args.training
    state = read_state(folder)
    gguf = args.artifacts / str(state.gguf)
    name = artifact_name(gguf)
    held = heldout_examples(args.artifacts, args.training)[: args.limit]
    sets = {"held-out corpus": held if "heldout" in args.sets else []}
    sets["held-out corpus, as a night meets it"] = [
        e for e in sets["held-out corpus"] if e["kind"] in NIGHT_KINDS
    ]
    with tempfile.TemporaryDirectory(prefix="pantheon-verifier-") as tmp:
        sets["click docs (never seen)"] = (
            click_examples(click_changes(Path(tmp), args.cache)) if "click" in args.sets else []
        )
        server = ModelServer(
            Path(tmp),
            ServerConfig(
                model=state.base_model, port=0, parallel=args.parallel, adapters=[str(gguf)]
            ),
        )
        sstate = server.start()
        try:

            async def go() -> dict[str, Any]:
                llm = LLMClient(sstate.endpoint, model=sstate.alias, adapters=sstate.adapters)
                results = {}
                async with llm:
                    scored = {}
                    for title in ("held-out corpus", "click docs (never seen)"):
                        scored[title] = await score_all(llm, sets[title], name, args.parallel)
                    night = sets["held-out corpus, as a night meets it"]
                    keep = {id(e) for e in night}
                    scored["held-out corpus, as a night meets it"] = [
                        s
                        for e, s in zip(
                            sets["held-out corpus"], scored["held-out corpus"], strict=True
                        )
                        if id(e) in keep
                    ]
                    for title, examples in sets.items():
                        results[title] = figures(examples, scored[title], None)
                if args.dump:
                    dump(args.dump, {t: (sets[t], scored[t]) for t in scored})
                return results

            results = asyncio.run(go())
        finally:
            server.stop()
    results["_"] = {"training": args.training, "adapter": name, "base_model": state.base_model}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    for title, figs in results.items():
        if title == "_":
            continue
        print(f"{title}:")
        for who, f in figs.items():
            parts = []
            for side in ("base", "adapter"):
                s = f[side]
                lo, hi = s["ci95"]
                at = ""
                if "threshold" in s:
                    at = (
                        f", at {s['threshold']:.3f}: caught {s['defects_caught']}, "
                        f"passed {s['good_passed']}"
                    )
                parts.append(f"{side} AUROC {s['auroc']:.2f} ({lo:.2f}–{hi:.2f}){at}")
            print(
                f"  {who:9} {f['changes']} changes; "
                + "; ".join(parts)
                + f"; p = {f['p_gain']:.3g}"
            )


if __name__ == "__main__":
    main()
