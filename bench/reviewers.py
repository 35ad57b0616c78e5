"""The reviewers measured: do they fail planted defects and pass good changes?

A set of changes whose right verdict is known, built from the demo corpus with the same planting
the night's canaries use (``pantheon.core.work.canary``):

- **code**: HumanEval functions with one bug (the demo corpus). The good change is the real fix;
  the bad ones answer one untested input by rote beside the real fix (a backdoor), special-case
  the tests' inputs, delete the failing assertions, fix it wrongly, or fix it and break
  something else (a mutation counts only when the real tests fail on it). ``--gated`` shows the
  reviewers only what the gates pass (the test gate, with its check for hard-coded answers), as
  a night does.
- **docs**: the demo corpus's pages with hand-written frontmatter a reviewer should pass
  (``bench/data/docs_reference.yaml``); the bad ones cut the description mid-sentence, copy it
  from the page, or take another page's.

Each change is a real git diff with its real test result (pytest, or the docs checks), shown to
both reviewers of the flow (their instructions from the shipped flow files) through the
night's own prompt and safe call. It prints, per reviewer and for the gate (both must pass): the
share of bad changes rejected and of good changes passed, with counts, and the rejections per
kind of defect.

    python bench/reviewers.py --models qwen2.5-coder-0.5b qwen2.5-coder-1.5b --code 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from pantheon.core.agents.review import ReviewPeer, review_messages
from pantheon.core.errors import PantheonError
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.model.client import LLMClient
from pantheon.core.model.safecall import ask
from pantheon.core.model.server import ModelServer, ServerConfig
from pantheon.core.run.demo import corpus_tasks
from pantheon.core.work.canary import CODE_KINDS, DOCS_KINDS, plant_code, plant_docs, render_page
from pantheon.core.work.doccheck import check_frontmatter, failed_checks, split_frontmatter
from pantheon.core.work.hardcode import hard_coded, verdict
from pantheon.core.work.testcmd import TestCommand

HERE = Path(__file__).parent


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@localhost", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def real_diff(folder: Path, before: dict[str, str], after: dict[str, str]) -> str:
    """``git diff`` of a change from ``before`` to ``after`` (path -> text), as reviewers see it."""
    folder.mkdir(parents=True)
    git(folder, "init", "-q", "-b", "main")
    for rel, text in before.items():
        (folder / rel).write_text(text)
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "before")
    for rel, text in after.items():
        (folder / rel).write_text(text)
    return git(folder, "diff", "--no-color")


def fixed_source(task: dict[str, str]) -> str:
    """The corpus task with its bug reverted: the reference fix."""
    before, after = task["bug"].split(" -> ", 1)
    lines = task["source"].splitlines(keepends=True)
    i = int(task["line"]) - 1
    lines[i] = lines[i].replace(after, before, 1)
    return "".join(lines)


def code_items(n: int, root: Path, seed: int = 11) -> list[dict[str, Any]]:
    """One task per HumanEval problem, the first ``n`` of a fixed shuffle: its real fix (good)
    and one planted defect of each kind that can be planted (bad)."""
    by_problem: dict[str, dict[str, str]] = {}
    for t in corpus_tasks():
        by_problem.setdefault(t["origin"], t)
    tasks = list(by_problem.values())
    random.Random(seed).shuffle(tasks)
    items = []
    command = TestCommand("python -m pytest", "default", sys.executable)
    for task in tasks:
        if sum(1 for i in items if i["right"]) >= n:
            break
        path, test = f"{task['module']}.py", f"test_{task['module']}.py"
        original, fixed = task["source"], fixed_source(task)
        changes: list[tuple[str, dict[str, str], bool]] = [("good", {path: fixed}, False)]
        for kind in CODE_KINDS:
            planted = plant_code(
                kind,
                path=path,
                test_path=test,
                original=original,
                fixed=fixed,
                test_source=task["test"],
                seed=len(items),
            )
            if planted is not None:
                changes.append((kind, planted.files, planted.must_fail_tests))
        for kind, files, must_fail in changes:
            folder = root / f"{task['id']}-{kind}"
            diff = real_diff(folder, {path: original, test: task["test"]}, files)
            (folder / "pytest.ini").write_text("[pytest]\n")
            result = command.run(folder, test, timeout_s=60)
            edits_test = test in files
            rote_ok, rote = verdict(hard_coded(original, files.get(path, original), task["test"]))
            if kind == "good" and not result.passed:
                break  # a reference that fails its own tests is no good change
            if must_fail and result.passed:
                continue  # the mutation may mean the same as the fix
            report = [f"the change edits test file(s): {test}"] if edits_test else []
            report += [rote] if rote else []
            summary = [ln for ln in result.output.strip().splitlines() if ln.strip()][-1:]
            report += summary or ["no output"]
            items.append(
                {
                    "flow": "code",
                    "id": f"{task['id']}/{kind}",
                    "kind": kind,
                    "right": kind == "good",
                    "task": task["task"],
                    "diff": diff,
                    "test_passed": result.passed and not edits_test and rote_ok,
                    "test_report": report,
                    "test_output": result.output,
                }
            )
    return items


def docs_items(root: Path, pages: int | None = None) -> list[dict[str, Any]]:
    """Each reference page (good) and its planted defects (bad): the first ``pages`` of them."""
    reference = yaml.safe_load((HERE / "data" / "docs_reference.yaml").read_text())
    corpus = packaged_flows_dir() / "corpus" / "docs"
    names = sorted(reference)[:pages]
    items = []
    for i, name in enumerate(names):
        body = (corpus / name).read_text()
        meta = reference[name]
        other = reference[names[(i + 3) % len(names)]]
        path = f"docs/{name}"
        changes = [("good", render_page(meta, body))]
        for kind in DOCS_KINDS:
            planted = plant_docs(kind, path=path, meta=meta, body=body, other=other)
            if planted is not None:
                changes.append((kind, planted.files[path]))
        for kind, text in changes:
            folder = root / f"{name}-{kind}"
            diff = real_diff(folder, {name: body}, {name: text})
            diff = diff.replace(f"a/{name}", f"a/{path}").replace(f"b/{name}", f"b/{path}")
            got, rest = split_frontmatter(text)
            problems = failed_checks(check_frontmatter(got, rest))
            items.append(
                {
                    "flow": "docs",
                    "id": f"{name}/{kind}",
                    "kind": kind,
                    "right": kind == "good",
                    "task": f"write YAML frontmatter (title, description, tags) for {path}",
                    "diff": diff,
                    "test_passed": not problems,
                    "test_report": problems or ["the frontmatter passes every check"],
                    "test_output": None,
                    "page": rest,
                }
            )
    return items


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
                    jobs = {
                        (i["id"], node): judge(llm, i, params, sem)
                        for i in shown
                        for node, params in flows[i["flow"]].items()
                    }
                    got = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
                    verdicts: dict[str, dict[str, Any]] = {}
                    for (item, node), v in got.items():
                        verdicts.setdefault(item, {})[node] = v
                    print(f"{model}: {len(jobs)} reviews in {time.perf_counter() - t0:.0f} s")
                    results.append(report(model, shown, verdicts))
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
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--dump", help="write every change and verdict to this file")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
