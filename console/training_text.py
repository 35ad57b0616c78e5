"""What the training screen says: the cells of an agent's row and the text of its latest
training, built from what :mod:`pantheon.console.training_files` read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text

from pantheon.core.learn.files import MIN_EXAMPLES, AgentTraining, TrainingState

__all__ = [
    "STATUS_STYLE",
    "about_text",
    "empty_text",
    "evidence_text",
    "no_training_text",
    "plural",
    "problem_line",
    "result_text",
    "row_cells",
    "serving_text",
]

STATUS_STYLE = {
    "running": "bold yellow",
    "evaluating": "bold yellow",
    "interrupted": "magenta",
    "failed": "bold red",
    "done": "green",
    "abandoned": "dim",
}


def evidence_text(evidence: dict[str, Any]) -> str:
    """An adapter's held-out evidence in short (``3 → 5 of 8, p 0.12``), or "" without it."""
    base, adapter, tasks = (evidence.get(k) for k in ("base_passed", "adapter_passed", "tasks"))
    if not all(isinstance(v, int) for v in (base, adapter, tasks)):
        return ""
    p = evidence.get("p_value")
    return f"{base} → {adapter} of {tasks}" + (f", p {p:.2g}" if isinstance(p, int | float) else "")


def problem_line(problem: str) -> str:
    """A problem's first line, without the file's name twice (``path: path is corrupt``)."""
    line = problem.splitlines()[0] if problem else ""
    where, _, what = line.partition(": ")
    return what if what.startswith(where) else line


def plural(n: int, what: str) -> str:
    """``1 agent``, ``2 agents``."""
    return f"{n} {what}" + ("" if n == 1 else "s")


def row_cells(row: AgentTraining) -> tuple[Text, ...]:
    """The agent's row of the table, one cell per column of the screen's ``COLUMNS``."""
    mined, adapter, latest = row.mined, row.adapter, row.latest

    def count(v: int | None) -> Text:
        return Text("–" if v is None else f"{v:,}", justify="right")

    if adapter is None:
        name, evidence = Text("base model", style="dim"), Text("")
    else:
        short = adapter.adapter.removeprefix(f"{row.agent}-")
        name, evidence = Text(short), Text(evidence_text(adapter.evidence))
    if latest is None:
        training = Text("none", style="dim")
    elif latest.status in ("running", "evaluating") and not latest.alive:
        training = Text("stopped", style="magenta")
    else:
        training = Text(latest.status, style=STATUS_STYLE.get(latest.status, ""))
    if latest is not None and latest.steps:
        training.append(f" {latest.step}/{latest.steps}", style="")
    return (
        Text(row.agent),
        count(mined.train if mined else None),
        count(mined.heldout if mined else None),
        count(mined.tasks if mined else None),
        name,
        evidence,
        training,
    )


def empty_text(root: Path | str) -> Text:
    """What the screen says while ``root`` holds no agent's data."""
    text = Text()
    text.append("No training data yet.\n\n", style="bold")
    text.append("An agent learns from the night's green runs. Mine them into examples with\n\n")
    text.append("  pantheon traces mine", style="bold")
    text.append(
        "\n\nthen pick an agent here and press s (or enter) to train an adapter for it in "
        "the background. It is judged on held-out tasks against the base model, and "
        "promoted only when it does better.\n\n"
    )
    text.append(f"This screen follows {root}: ")
    text.append("it fills in by itself.")
    return text


def no_training_text(row: AgentTraining) -> Text:
    """Why the agent has no training yet, and what to do about it."""
    text = Text()
    text.append(f"{row.agent} has not been trained yet.", style="bold")
    mined = row.mined
    if mined is None:
        text.append(" It has no mined data: run pantheon traces mine first.")
    elif mined.train < MIN_EXAMPLES:
        why = ", ".join(f"{n} {k}" for k, n in sorted(mined.left_out.items()))
        text.append(
            f" Not enough data to train: {mined.train} < {MIN_EXAMPLES} green examples"
            + (f" (jobs left out: {why})." if why else ".")
        )
    else:
        text.append(f" Press s to train an adapter on its {mined.train:,} examples.")
    return text


def about_text(latest: TrainingState, alive: bool) -> Text:
    """The training's id, status and base model."""
    text = Text()
    text.append(latest.id, style="bold")
    text.append("  ")
    if latest.status in ("running", "evaluating") and not alive:
        text.append(f"{latest.status}, but its process is gone", style="magenta")
    else:
        text.append(latest.status, style=STATUS_STYLE.get(latest.status, ""))
    text.append(
        f"\nbase model {latest.base_model} · {latest.examples:,} examples · "
        f"{latest.heldout:,} held out",
        style="dim",
    )
    return text


def result_text(row: AgentTraining, latest: TrainingState) -> Text:
    """The training's outcome: held-out loss, error, evaluation; and what the agent is served."""
    text = Text()
    before, after = latest.heldout_loss_before, latest.heldout_loss_after
    if before is not None or after is not None:
        text.append("held-out loss ")
        text.append("–" if before is None else f"{before:.3f}")
        text.append(" → ")
        text.append("…" if after is None else f"{after:.3f}", style="bold")
        text.append("\n")
    if (memory := latest.memory_text()) is not None:
        text.append(memory + "\n")
    if latest.status == "failed":
        text.append("FAILED: ", style="bold red")
        text.append(f"{latest.error or 'no error recorded'}\n", style="red")
    elif latest.error:  # an evaluation that failed, a training stopped at once
        text.append(f"{latest.error}\n", style="red")
    ev = latest.evaluation
    if ev is not None:
        text.append(f"{ev.tasks} held-out tasks: ")
        text.append(f"base passed {ev.base_passed}, adapter passed {ev.adapter_passed}")
        text.append(f" · b {ev.b} · c {ev.c} · p {ev.p_value:.3g} (α {ev.alpha:g})\n")
        if ev.promoted:
            text.append("✓ promoted", style="bold green")
            text.append(f": {ev.reason}\n", style="green")
        else:
            text.append("✗ not promoted", style="bold red")
            text.append(f": {ev.reason}\n", style="red")
    elif latest.status == "evaluating":
        text.append(
            "evaluating: the base model and the adapter run the held-out tasks…\n",
            style="yellow",
        )
    elif latest.status == "done" and not latest.promote:
        text.append("not evaluated (trained without --promote)\n", style="dim")
    text.append_text(serving_text(row))
    return text


def serving_text(row: AgentTraining) -> Text:
    """The adapter the agent's calls use (or the base model), with its evidence."""
    text = Text("serving: ", style="dim")
    if row.adapter is None:
        text.append("the base model (no adapter promoted)", style="dim")
        return text
    text.append(row.adapter.adapter, style="bold")
    evidence = evidence_text(row.adapter.evidence)
    if evidence:
        text.append(f"  (passed base → adapter: {evidence})", style="dim")
    return text
