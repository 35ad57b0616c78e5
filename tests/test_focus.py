"""A long file fixed in focus: its outline and the suspect functions shown, only they asked
back, and a prompt past the server's context never sent."""

from __future__ import annotations

import asyncio
import json
import textwrap

import pytest
from helpers import git, make_repo, scripted_model

from pantheon.core.errors import NodeError
from pantheon.core.work.codefix import run_fix
from pantheon.core.work.edits import CandidateError, apply_functions
from pantheon.core.work.focus import WHOLE_FILE_CHARS, focus_of
from pantheon.core.work.testcmd import resolve_test_command

FILLER = "\n\n".join(
    f"def helper_{i}(x):\n    '''Helper number {i}.'''\n    y = x + {i}\n    return y * {i}"
    for i in range(80)
)
BIG = f"""import math


class Ledger:
    def __init__(self):
        self.rows = []

    def add(self, amount):
        self.rows.append(amount)

    def balance(self):
        return sum(self.rows) - 1


{FILLER}


def norm(x, y):
    return math.hypot(x, y)
"""
TESTS = """
from big import Ledger, norm

def test_balance():
    led = Ledger()
    led.add(5)
    led.add(7)
    assert led.balance() == 12

def test_norm():
    assert norm(3, 4) == 5
"""
SUSPECTS = [
    {"path": "big.py", "name": "Ledger.balance", "start": 11, "end": 12, "score": 1.0},
    {"path": "big.py", "name": "Ledger.add", "start": 8, "end": 9, "score": 0.7},
]
FIXED_METHOD = "```python\ndef balance(self):\n    return sum(self.rows)\n```"


def test_a_method_given_back_alone_goes_back_in_its_class_at_its_indentation():
    fixed = apply_functions(FIXED_METHOD, BIG, [("Ledger.balance", 11, 12)])
    assert "    def balance(self):\n        return sum(self.rows)\n" in fixed
    assert fixed.replace("sum(self.rows)\n", "sum(self.rows) - 1\n", 1) == BIG
    with pytest.raises(CandidateError, match="none of the shown"):
        apply_functions("```python\ndef other():\n    pass\n```", BIG, [("Ledger.balance", 11, 12)])
    with pytest.raises(CandidateError, match="changes nothing"):
        apply_functions(
            "```python\ndef balance(self):\n    return sum(self.rows) - 1\n```",
            BIG,
            [("Ledger.balance", 11, 12)],
        )


def test_only_a_long_file_is_shown_in_focus():
    assert len(BIG) > WHOLE_FILE_CHARS
    assert focus_of("def f():\n    return 1\n", "m.py", SUSPECTS) is None
    assert focus_of(BIG, "big.py", []) is None  # nothing to focus on: shown whole
    focus = focus_of(BIG, "big.py", SUSPECTS)
    assert focus is not None
    assert [name for name, _, _ in focus.shown] == ["Ledger.balance", "Ledger.add"]
    assert "    def balance(self): ...  # shown below" in focus.outline
    assert "import math" in focus.outline and "def helper_0(x): ..." in focus.outline
    # 83 definitions: those far from the shown functions are said, not listed
    assert "def norm(x, y)" not in focus.outline
    assert focus.outline.endswith("# ... 6 more definition(s)")
    assert len(focus.outline.splitlines()) <= 80 + 3
    assert "return sum(self.rows) - 1" in focus.code and "math.hypot" not in focus.code


def _fix(repo, llm, http, name="big", **extra):
    """run_fix on ``name``.py (k = 1 unless given) with the scripted server, closing it after."""

    async def go():
        try:
            return await run_fix(
                llm,
                root=repo,
                path=f"{name}.py",
                test_path=f"test_{name}.py",
                task=f"Fix {name}.py",
                command=resolve_test_command(repo),
                **{"k": 1, **extra},
            )
        finally:
            await http.aclose()

    return asyncio.run(go())


def _repo(tmp_path):
    return make_repo(tmp_path / "r", {"big.py": BIG, "test_big.py": TESTS})


def test_a_long_module_is_fixed_from_its_suspect_method_alone(tmp_path):
    repo = _repo(tmp_path)
    prompts = []

    def answer(body):
        prompts.append(body["messages"][1]["content"])
        return FIXED_METHOD

    llm, http = scripted_model(answer, context=4096)
    result = _fix(repo, llm, http, suspects=SUSPECTS)
    assert result.chosen.passed and result.chosen.lines == 2
    assert "return sum(self.rows)\n" in (repo / "big.py").read_text()
    [prompt] = prompts
    assert "Helper number 3" not in prompt, "the module is not shown whole"
    assert "def helper_3(x): ..." in prompt and "sum(self.rows) - 1" in prompt
    assert len(prompt) < len(BIG) / 2


def test_a_prompt_past_the_servers_context_is_never_sent(tmp_path):
    repo = _repo(tmp_path)
    sent = []
    llm, http = scripted_model(lambda body: sent.append(body) or "no", context=1024)

    with pytest.raises(NodeError, match=r"exceed the model's context \(1024 tokens a request\)"):
        _fix(repo, llm, http)
    assert sent == []


def test_the_focused_prompt_is_what_the_calls_record(tmp_path):
    # the learn loop mines calls.jsonl: the recorded messages are the ones sent
    from pantheon.core.model.safecall import CallLog

    repo = _repo(tmp_path)
    llm, http = scripted_model(lambda body: FIXED_METHOD, context=4096)
    (tmp_path / "code").mkdir()
    log = CallLog(tmp_path / "code")
    _fix(repo, llm, http, suspects=SUSPECTS, log=log)
    [call] = [json.loads(x) for x in (tmp_path / "code" / "calls.jsonl").read_text().splitlines()]
    assert call["chosen"] is True
    assert "outline" in call["messages"][1]["content"]
    assert textwrap.dedent(FIXED_METHOD) == call["raw"]


SMALL = (
    "def mean(xs):\n    return sum(xs) / (len(xs) + 1)\n\n\n"
    "def span(xs):\n    return max(xs) - min(xs)\n"
)
SMALL_FIXED = (
    "```python\n"
    + SMALL.replace("return sum(xs) / (len(xs) + 1)", "return sum(xs) / len(xs) if xs else 0")
    + "```"
)
"""A reply with the right fix of ``mean``."""
SMALL_TESTS = (
    "from small import mean\n\n"
    "def test_one():\n    assert mean([4]) == 4\n\n"
    "def test_two():\n    assert mean([1, 3]) == 2\n\n"
    "def test_empty():\n    assert mean([]) == 0\n"
)


def test_a_second_round_shows_the_best_failing_candidate_its_own_test_output(tmp_path):
    """k = 4 over two rounds: greedy and one sample fail; the one that passed more tests goes
    back with its own output; the second round's answer is kept, and says which round it was."""
    repo = make_repo(tmp_path / "r", {"small.py": SMALL, "test_small.py": SMALL_TESTS})
    half = "```python\n" + SMALL.replace("(len(xs) + 1)", "len(xs)") + "```"
    bodies = []

    def answer(body):
        bodies.append(body)
        if len(bodies) == 1:
            return f"The bug: nothing.\n```python\n{SMALL}```"  # the file as it was
        if len(bodies) == 2:
            return [half]  # passes two of three tests
        return [SMALL_FIXED] * body.get("n", 1)

    llm, http = scripted_model(answer)
    result = _fix(repo, llm, http, name="small", k=4, rounds=2, name_bug=True)
    assert len(bodies) == 3 and bodies[1].get("n", 1) == 1 and bodies[2]["n"] == 2
    assert "one sentence that names the bug" in bodies[0]["messages"][0]["content"]
    again = bodies[2]["messages"]
    assert [m["role"] for m in again] == ["system", "user", "assistant", "user"]
    assert again[2]["content"] == half, "the candidate that passed most tests goes back"
    assert "ZeroDivisionError" in again[3]["content"] and "test_empty" in again[3]["content"]
    assert result.chosen.round == 2 and result.chosen.index == 2
    assert "if xs else 0" in (repo / "small.py").read_text()
    assert [c.round for c in result.candidates] == [1, 1, 2, 2]


def test_hot_lines_asked_for_are_quoted_in_the_prompt_and_only_then(tmp_path):
    repo = make_repo(tmp_path / "r", {"small.py": SMALL, "test_small.py": SMALL_TESTS})
    suspects = [{"path": "small.py", "name": "mean", "start": 1, "end": 2, "lines": [2]}]
    prompts = []

    def answer(body):
        prompts.append(body["messages"][-1]["content"])
        return [SMALL_FIXED] * body.get("n", 1)

    for hot in (True, False):
        llm, http = scripted_model(answer)
        _fix(repo, llm, http, name="small", suspects=suspects, hot_lines=hot)
        git(repo, "checkout", "-q", "--", "small.py")
    quoted = "2 |     return sum(xs) / (len(xs) + 1)"
    assert quoted in prompts[0] and "The lines the failing tests run" in prompts[0]
    assert "The lines the failing tests run" not in prompts[1]


def test_a_second_round_that_would_not_fit_the_context_samples_the_first_prompt(tmp_path):
    """The best failing candidate's reply is too long to go back within the server's context:
    the rest of the k candidates are sampled from the first prompt, not given up."""
    repo = make_repo(tmp_path / "r", {"small.py": SMALL, "test_small.py": SMALL_TESTS})
    padding = "# " + "a long explanation " * 400 + "\n"
    half = "```python\n" + padding + SMALL.replace("(len(xs) + 1)", "len(xs)") + "```"
    bodies = []

    def answer(body):
        bodies.append(body)
        return [half] if len(bodies) <= 2 else [SMALL_FIXED] * body.get("n", 1)

    llm, http = scripted_model(answer, context=1024)  # the server counts a word a token
    result = _fix(repo, llm, http, name="small", k=4, rounds=2)
    assert len(bodies) == 3 and bodies[2]["n"] == 2
    assert [m["role"] for m in bodies[2]["messages"]] == ["system", "user"]
    assert result.chosen.passed and [c.round for c in result.candidates] == [1, 1, 1, 1]
    assert "if xs else 0" in (repo / "small.py").read_text()
