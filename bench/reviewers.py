"""The reviewers measured: do they fail planted defects and pass good changes?

A set of changes whose right verdict is known, built from the demo corpus with the same planting
the night's canaries use (``pantheon.core.work.labelled``, as reviewer training does):

- **code**: HumanEval functions with one bug (the demo corpus). The good change is the real fix;
  the bad ones answer one untested input by rote beside the real fix (a backdoor), special-case
  the tests' inputs, delete the failing assertions, fix it wrongly, or fix it and break
  something else (a mutation counts only when the real tests fail on it). ``--gated`` shows the
  reviewers only what the gates pass (the test gate, with its check for hard-coded answers), as
  a night does.
- **docs**: the demo corpus's pages with hand-written frontmatter a reviewer should pass
  (``flows/corpus/docs_reference.yaml``); the bad ones cut the description mid-sentence, copy it
  from the page, or take another page's.

Each change is a real git diff with its real test result (pytest, or the docs checks), shown to
both reviewers of the flow (their instructions from the shipped flow files) through the
night's own prompt and safe call. It prints, per reviewer and for the gate (both must pass): the
share of bad changes rejected and of good changes passed, with counts, and the rejections per
kind of defect.

``--scored`` asks each reviewer for one verdict token and reads P(pass) from the server's
logprobs (``pantheon.core.model.scoring``). It prints, per reviewer and for the gate (the lower
of the two scores): AUROC with its 95 % interval (good against bad changes), and a threshold fit
on the first half of the problems to let at most 20 % of their defects through, judged on the
other half: defects caught and good changes passed there.

    python bench/reviewers.py --models qwen2.5-coder-0.5b qwen2.5-coder-1.5b --code 20
    python bench/reviewers.py --scored --gated --code 30 --docs 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from pantheon.core.agents.review import ReviewPeer, review_messages
from pantheon.core.errors import PantheonError
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.model.client import LLMClient
from pantheon.core.model.safecall import ask
from pantheon.core.model.scoring import score_verdict
from pantheon.core.model.server import ModelServer, ServerConfig
from pantheon.core.observe.quality import fit_threshold, quality
from pantheon.core.run.demo import corpus_tasks
from pantheon.core.work.labelled import code_changes, one_per_problem, shipped_docs_changes


def code_items(n: int, root: Path) -> list[dict[str, Any]]:
    """One task per HumanEval problem, the first ``n`` of a fixed shuffle with a reference fix
    that passes: its real fix (good) and one planted defect of each kind that can be planted."""
    tasks = one_per_problem(corpus_tasks())
    items: list[dict[str, Any]] = []
    done = 0
    while sum(1 for i in items if i["right"]) < n and done < len(tasks):
        chunk = tasks[done : done + n - sum(1 for i in items if i["right"])]
        done += len(chunk)
        items += [asdict(c) for c in code_changes(chunk, root)]
    return items


def docs_items(root: Path, pages: int | None = None) -> list[dict[str, Any]]:
    """Each reference page (good) and its planted defects (bad): the first ``pages`` of them."""
    return [asdict(c) for c in shipped_docs_changes(root, pages=pages)]


def reviewers_of(flow_file: str) -> dict[str, dict[str, Any]]:
    """The flow's reviewer nodes and their params, from the shipped flow file."""
    spec = yaml.safe_load((packaged_flows_dir() / flow_file).read_text())
    return {n["id"]: n.get("params", {}) for n in spec["nodes"] if n.get("agent") == "review.peer"}


async def judge(llm, item, params, sem) -> bool | None:
    given = ReviewPeer.Input(
        task=item["task"],
        kind=item["flow"],
        test_passed=item["test_passed"],
        test_report=item["test_report"],
        test_output=item["test_output"],
    )
    p = ReviewPeer.Params.model_validate(params)
    async with sem:
        try:
            verdict = await ask(
                llm,
                review_messages(given, item["diff"], p.instructions, page=item.get("page")),
                ReviewPeer.Verdict,
                max_tokens=p.max_tokens,
                check=ReviewPeer.problems,
            )
        except PantheonError as exc:
            item.setdefault("errors", {})[params.get("instructions", "")[:40]] = str(exc)[:300]
            return None
    item.setdefault("reasons", []).append(verdict.reasons)  # type: ignore[attr-defined]
    return bool(verdict.passed)  # type: ignore[attr-defined]


async def score(llm, item, params, sem) -> float | None:
    """P(pass) of one reviewer for one change; None when the model gives no verdict token."""
    given = ReviewPeer.Input(
        task=item["task"],
        kind=item["flow"],
        test_passed=item["test_passed"],
        test_report=item["test_report"],
        test_output=item["test_output"],
    )
    p = ReviewPeer.Params.model_validate(params)
    messages = review_messages(
        given, item["diff"], p.instructions, page=item.get("page"), scored=True
    )
    async with sem:
        try:
            return (await score_verdict(llm, messages)).p_pass
        except PantheonError as exc:
            item.setdefault("errors", {})[params.get("instructions", "")[:40]] = str(exc)[:300]
            return None


def _problem(item: dict[str, Any]) -> str:
    """What a change is of (its problem or page): the halves split by it, never inside it."""
    return str(item.get("key") or item.get("path") or item["id"].split(":", 1)[0])


def scored_report(
    model: str, items: list[dict[str, Any]], scores: dict[str, dict[str, Any]]
) -> dict:
    out: dict[str, Any] = {"model": model, "scored": True}
    for flow in ("code", "docs"):
        mine = [i for i in items if i["flow"] == flow]
        if not mine:
            continue
        nodes = sorted(scores[mine[0]["id"]])
        problems = sorted({_problem(i) for i in mine})
        tune = set(problems[::2])
        rows = {}
        for who in [*nodes, "gate"]:

            def value(i, who=who, nodes=nodes):
                v = scores[i["id"]]
                got = [v[n] for n in nodes] if who == "gate" else [v[who]]
                return None if any(x is None for x in got) else min(got)

            scored = [(i, value(i)) for i in mine if value(i) is not None]
            good = [x for i, x in scored if i["right"]]
            bad = [x for i, x in scored if not i["right"]]
            if not good or not bad:
                print(
                    f"{model:20} {flow:4} {who:9} too few scores ({len(good)} good, {len(bad)} bad)"
                )
                continue
            q = quality(good, bad)
            row: dict[str, Any] = {"auroc": q.auroc, "low": q.low, "high": q.high}
            row |= {"good": len(good), "bad": len(bad), "informative": q.informative}
            mean_good, mean_bad = sum(good) / len(good), sum(bad) / len(bad)
            row |= {"mean_p_pass_good": mean_good, "mean_p_pass_bad": mean_bad}
            fit_good = [x for i, x in scored if i["right"] and _problem(i) in tune]
            fit_bad = [x for i, x in scored if not i["right"] and _problem(i) in tune]
            held_good = [x for i, x in scored if i["right"] and _problem(i) not in tune]
            held_bad = [x for i, x in scored if not i["right"] and _problem(i) not in tune]
            said = ""
            if fit_good and fit_bad and held_good and held_bad:
                t = fit_threshold(fit_good, fit_bad, max_defects_through=0.2)
                caught = sum(x < t.value for x in held_bad)
                passed = sum(x >= t.value for x in held_good)
                row |= {"threshold": t.value, "held_bad_caught": caught, "held_bad": len(held_bad)}
                row |= {"held_good_passed": passed, "held_good": len(held_good)}
                said = (
                    f"; at {t.value:.3f} (fit on half the problems) the other half: bad caught "
                    f"{share(caught, len(held_bad))}, good passed {share(passed, len(held_good))}"
                )
            rows[who] = row
            print(
                f"{model:20} {flow:4} {who:9} {q.describe()}; mean P(pass) good {mean_good:.2f}, "
                f"bad {mean_bad:.2f}{said}",
                flush=True,
            )
        missing = sum(1 for i in mine for n in nodes if scores[i["id"]][n] is None)
        if missing:
            print(f"{model:20} {flow:4} {missing} review(s) gave no verdict token", flush=True)
        out[flow] = {"rows": rows, "no_score": missing}
    return out


def share(k: int, n: int) -> str:
    return f"{k:3}/{n:<3} ({k / n:4.0%})" if n else "   -   "


def report(model: str, items: list[dict[str, Any]], verdicts: dict[str, dict[str, Any]]) -> dict:
    out: dict[str, Any] = {"model": model}
    for flow in ("code", "docs"):
        mine = [i for i in items if i["flow"] == flow]
        if not mine:
            continue
        nodes = sorted(verdicts[mine[0]["id"]])
        good = [i for i in mine if i["right"]]
        bad = [i for i in mine if not i["right"]]
        rows = {}
        for who in [*nodes, "gate"]:

            def says_pass(i, who=who, nodes=nodes):
                v = verdicts[i["id"]]
                return all(v[n] is True for n in nodes) if who == "gate" else v[who] is True

            rejected = sum(1 for i in bad if not says_pass(i))
            passed = sum(1 for i in good if says_pass(i))
            rows[who] = {"bad_rejected": rejected, "bad": len(bad), "good_passed": passed}
            rows[who]["good"] = len(good)
            print(
                f"{model:20} {flow:4} {who:9} bad rejected {share(rejected, len(bad))}  "
                f"good passed {share(passed, len(good))}",
                flush=True,
            )
        kinds = sorted({i["kind"] for i in bad})
        per_kind = {}
        for kind in kinds:
            these = [i for i in bad if i["kind"] == kind]
            caught = sum(1 for i in these if not all(verdicts[i["id"]][n] for n in nodes))
            per_kind[kind] = [caught, len(these)]
        no_verdict = sum(1 for i in mine for n in nodes if verdicts[i["id"]][n] is None)
        print(
            f"{model:20} {flow:4} gate by kind: "
            + ", ".join(f"{k} {c}/{n}" for k, (c, n) in per_kind.items())
            + (f"; {no_verdict} review(s) gave no usable verdict" if no_verdict else ""),
            flush=True,
        )
        # a night shows the reviewers only what the gates passed, and merges what all pass
        merged = {
            i["id"] for i in mine if i["test_passed"] and all(verdicts[i["id"]][n] for n in nodes)
        }
        reader = [i for i in bad if i["test_passed"]]
        night = {
            "bad_rejected": sum(1 for i in bad if i["id"] not in merged),
            "bad": len(bad),
            "good_passed": sum(1 for i in good if i["id"] in merged),
            "good": len(good),
            "reader_only_caught": sum(1 for i in reader if i["id"] not in merged),
            "reader_only": len(reader),
        }
        rows["night"] = night
        print(
            f"{model:20} {flow:4} {'night':9} bad rejected "
            f"{share(night['bad_rejected'], len(bad))}  good merged "
            f"{share(night['good_passed'], len(good))}  (gates and reviewers; of the bad the "
            f"gates pass, the reviewers caught {share(night['reader_only_caught'], len(reader))})",
            flush=True,
        )
        out[flow] = {"rows": rows, "by_kind": per_kind, "no_verdict": no_verdict}
    return out


async def main_async(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        items = (code_items(args.code, root / "code") if args.code else []) + (
            docs_items(root / "docs", args.docs) if args.docs else []
        )
        print(
            f"{sum(i['right'] for i in items)} good and {sum(not i['right'] for i in items)} bad "
            f"changes built in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        flows = {"code": reviewers_of("codefix.yaml"), "docs": reviewers_of("docops.yaml")}
        results = []
        for model in args.models:
            server = None
            if args.endpoint:
                endpoint = args.endpoint
            else:
                server = ModelServer(
                    root / f"artifacts-{model}",
                    ServerConfig(model=model, port=0, parallel=args.parallel, ctx_per_slot=4096),
                )
                endpoint = (await asyncio.to_thread(server.start)).endpoint
            try:
                async with LLMClient(endpoint, timeout_s=900) as llm:
                    sem = asyncio.Semaphore(args.parallel)
                    t0 = time.perf_counter()
                    shown = [i for i in items if i["test_passed"] or not args.gated]
                    ask_one = score if args.scored else judge
                    jobs = {
                        (i["id"], node): ask_one(llm, i, params, sem)
                        for i in shown
                        for node, params in flows[i["flow"]].items()
                    }
                    got = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
                    verdicts: dict[str, dict[str, Any]] = {}
                    for (item, node), v in got.items():
                        verdicts.setdefault(item, {})[node] = v
                    print(f"{model}: {len(jobs)} reviews in {time.perf_counter() - t0:.0f} s")
                    tell = scored_report if args.scored else report
                    results.append(tell(model, shown, verdicts))
                    if args.dump:
                        Path(args.dump).write_text(
                            json.dumps({"items": items, "verdicts": verdicts}, indent=1)
                        )
            finally:
                if server is not None:
                    await asyncio.to_thread(server.stop)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b"])
    ap.add_argument("--code", type=int, default=20, help="HumanEval problems (0: no code)")
    ap.add_argument("--docs", type=int, default=10, help="reference pages (0: no docs)")
    ap.add_argument("--parallel", type=int, default=4, help="the server's slots")
    ap.add_argument("--endpoint", help="a running server instead of the embedded one")
    ap.add_argument(
        "--gated",
        action="store_true",
        help="review only the changes the gates pass, as a night does",
    )
    ap.add_argument(
        "--scored",
        action="store_true",
        help="one verdict token each, scored by its probability: AUROC and a fitted threshold",
    )
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--dump", help="write every change and verdict to this file")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
