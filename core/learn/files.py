"""The learn loop's files in the artifacts directory, and how to read them (no torch here).

``pantheon.trainer`` writes them; the console and ``pantheon status`` read them::

    training/
      <agent>/data.jsonl        one chat example per line (the reply last), train or held out
      <agent>/tasks.jsonl       the held-out jobs, re-run through the real flow to judge an adapter
      <agent>/mine.json         what mining found: counts, and why traces were left out
      <id>/state.json           one training: agent, options, status, step, result, evaluation
      <id>/progress.jsonl       one line per optimizer step: step, loss, lr, tokens, eta
      <id>/adapter/             the peft adapter (safetensors), for vLLM and for resuming
      <id>/<id>.gguf            the same adapter as a GGUF LoRA, for llama.cpp's llama-server
      <id>/evaluation.json      base against adapter on the held-out tasks, and the decision
      learn.json                the learn loop's last run: per agent, trained or why not
    adapters/
      registry.json             each agent's promoted adapter, with its evidence, and the history
      <name>.gguf, <name>/      the promoted adapters' files

A training id is ``<agent>-<UTC time>`` (``doc.frontmatter-20261124T221500``); the adapter's name
on the model server is the same id. Every file is written atomically; a reader that finds one
corrupt says so and goes on.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pantheon.core.errors import ArtifactError
from pantheon.core.learn.evaluation import Evaluation, TaskResult
from pantheon.core.store.atomic import atomic_write_json, locked, read_json
from pantheon.core.store.jsonl import parse_jsonl

__all__ = [
    "MIN_EXAMPLES",
    "AgentLearn",
    "AgentTraining",
    "Evaluation",
    "LearnRun",
    "MineStats",
    "ProgressRow",
    "Registry",
    "RegistryEntry",
    "TaskResult",
    "TrainingState",
    "agent_adapters",
    "agent_overview",
    "list_trainings",
    "read_learn",
    "read_progress",
    "read_registry",
    "read_state",
    "registry_path",
    "served_adapters",
    "training_id",
    "update_registry",
    "verifier_adapters",
]

TRAINING = "training"
ADAPTERS = "adapters"
REGISTRY = "registry.json"
LEARN = "learn.json"
REGISTRY_SCHEMA = "pantheon.adapters/1"
MIN_EXAMPLES = 50
"""Fewer green training examples than this make an adapter that rarely helps: refused."""

Status = Literal["running", "evaluating", "interrupted", "failed", "done", "abandoned"]


def training_root(artifacts: Path) -> Path:
    return Path(artifacts) / TRAINING


def training_id(agent: str, when: datetime | None = None) -> str:
    return f"{agent}-{(when or datetime.now(UTC)).strftime('%Y%m%dT%H%M%S')}"


class MineStats(BaseModel):
    """``training/<agent>/mine.json``."""

    model_config = ConfigDict(extra="ignore")

    agent: str
    fraction: float = 0.2
    """The share of the tasks held out."""
    model: str | None = None
    """The model that answered most of its examples (an adapter is trained on it)."""
    examples: int = 0
    """Chat examples kept, after deduplication (train + held-out)."""
    train: int = 0
    heldout: int = 0
    duplicates: int = 0
    green_jobs: int = 0
    tasks: int = 0
    """Held-out jobs (green or not) kept to judge an adapter."""
    left_out: dict[str, int] = Field(default_factory=dict)
    """Why jobs gave no example: failed, disagreed, rejected, corrupt, unfinished, unusable
    call, failed candidate (a code fix's candidate whose tests failed)."""
    labels: dict[str, int] = Field(default_factory=dict)
    """A reviewer's labelled examples by right verdict (pass, fail): canaries and the operator's
    morning decisions."""
    corpus: int = 0
    """Of the examples, those made from the shipped corpus's labelled changes (``--corpus``)."""
    at: datetime | None = None


class ProgressRow(BaseModel):
    """One line of ``progress.jsonl``."""

    model_config = ConfigDict(extra="ignore")

    step: int
    steps: int
    epoch: float = 0.0
    loss: float
    lr: float
    tokens: int = 0
    """Tokens trained on so far."""
    elapsed_s: float = 0.0
    eta_s: float | None = None
    heldout_loss: float | None = None
    """Measured at this step (every few steps)."""
    at: datetime | None = None


class TrainingState(BaseModel):
    """``training/<id>/state.json``."""

    model_config = ConfigDict(extra="ignore")

    id: str
    agent: str
    status: Status
    base_model: str
    options: dict[str, Any] = Field(default_factory=dict)
    pid: int | None = None
    step: int = 0
    steps: int = 0
    examples: int = 0
    heldout: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    heldout_loss_before: float | None = None
    heldout_loss_after: float | None = None
    """Of the adapter kept: the best checkpoint's."""
    heldout_curve: list[tuple[int, float]] = Field(default_factory=list)
    """(step, held-out loss) each time it was measured."""
    best_step: int | None = None
    """The step whose adapter is kept: where the held-out loss was lowest."""
    stopped: str | None = None
    """Why it stopped before its last step (the time budget), when it did."""
    elapsed_s: float = 0.0
    """Training time so far, over every run of it (a resumed one goes on counting)."""
    peak_memory_mb: float | None = None
    """The training's peak resident memory, in MiB."""
    peak_memory_scope: Literal["training", "process"] | None = None
    """Whose peak ``peak_memory_mb`` is: this training's own (its start reset the peak), or
    the whole process's since it started (the reset could not lower it)."""
    peak_gpu_mb: float | None = None
    """The GPU's peak allocation on CUDA, in MiB."""
    gguf: str | None = None
    """The GGUF LoRA file, relative to the artifacts directory."""
    peft: str | None = None
    """The peft adapter folder, relative to the artifacts directory."""
    promote: bool = False
    """Evaluate and promote when training ends."""
    evaluation: Evaluation | None = None

    def memory_text(self) -> str | None:
        """``peak memory 9.4 GB`` (and the GPU's), or None when it was not measured."""
        if self.peak_memory_mb is None:
            return None
        gpu = "" if self.peak_gpu_mb is None else f", GPU {self.peak_gpu_mb / 1024:.1f} GB"
        whose = " (the process's, not this training's alone)" * (
            self.peak_memory_scope == "process"
        )
        return f"peak memory {self.peak_memory_mb / 1024:.1f} GB{whose}{gpu}"

    @property
    def alive(self) -> bool:
        """Still running: its status says so and its process exists."""
        if self.status not in ("running", "evaluating") or self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class RegistryEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    agent: str
    adapter: str
    """The adapter's name on the model server."""
    gguf: str | None = None
    """For llama.cpp, relative to the artifacts directory."""
    peft: str | None = None
    """For vLLM, relative to the artifacts directory."""
    training: str
    base_model: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    """The evaluation's counts and p-value."""
    promoted_at: datetime | None = None

    @property
    def verifier(self) -> bool:
        """A verifier: judged on its P(pass) for labelled changes, so it answers a scored
        reviewer's one verdict word, not a reasoned review."""
        return self.evidence.get("judged_by") == "scores"


class Registry(BaseModel):
    """``adapters/registry.json``: each agent's promoted adapter, and what happened before."""

    model_config = ConfigDict(extra="ignore")

    schema_: str = Field(default=REGISTRY_SCHEMA, alias="schema")
    agents: dict[str, RegistryEntry] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)
    """Every promotion and rollback, oldest first: {at, agent, action, adapter, previous}."""

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def registry_path(artifacts: Path) -> Path:
    return Path(artifacts) / ADAPTERS / REGISTRY


def read_registry(artifacts: Path) -> Registry:
    """The registry; missing means no adapter promoted. A corrupt one raises ArtifactError."""
    path = Path(artifacts) / ADAPTERS / REGISTRY
    try:
        data = read_json(path)
    except FileNotFoundError:
        return Registry()
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        raise ArtifactError(
            f"{path} does not fit the adapter registry: {exc.errors()[0]['msg']}",
            hint="restore it from a backup, or remove it to serve the base model only",
        ) from exc


def update_registry(artifacts: Path, change) -> Registry:
    """Apply ``change(registry)`` under the registry's lock and write it atomically."""
    path = Path(artifacts) / ADAPTERS / REGISTRY
    with locked(path.with_name(".registry.lock")):
        registry = read_registry(artifacts)
        change(registry)
        atomic_write_json(path, registry.dump(), fsync=True)
        return registry


def read_state(folder: Path) -> TrainingState:
    path = Path(folder) / "state.json"
    try:
        return TrainingState.model_validate(read_json(path))
    except ValidationError as exc:
        raise ArtifactError(
            f"{path} does not fit a training state: {exc.errors()[0]['msg']}"
        ) from exc


def list_trainings(artifacts: Path, agent: str | None = None) -> list[TrainingState]:
    """Every training with a readable ``state.json``, oldest first."""
    out: list[TrainingState] = []
    try:
        entries = list(os.scandir(training_root(artifacts)))
    except FileNotFoundError:
        return out
    for entry in entries:
        if not entry.is_dir() or not os.path.exists(os.path.join(entry.path, "state.json")):
            continue
        try:
            state = read_state(Path(entry.path))
        except (ArtifactError, FileNotFoundError):
            continue
        if agent is None or state.agent == agent:
            out.append(state)
    out.sort(key=lambda s: (s.started_at or datetime.min.replace(tzinfo=UTC), s.id))
    return out


def read_progress(folder: Path, offset: int = 0) -> tuple[list[ProgressRow], int]:
    """The progress rows from byte ``offset`` on, and the offset to read from next time.

    A line still being written (no newline yet) waits for the next read; a garbled line is
    skipped.
    """
    path = Path(folder) / "progress.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    values, _ = parse_jsonl(data[:end], record=ProgressRow)
    return [ProgressRow.model_validate(v) for v in values], offset + end


class AgentTraining(BaseModel):
    """One row of the training screen."""

    agent: str
    mined: MineStats | None = None
    adapter: RegistryEntry | None = None
    latest: TrainingState | None = None


def agent_overview(artifacts: Path) -> tuple[list[AgentTraining], list[str]]:
    """Each agent with mined data, a training or a promoted adapter; and the problems found."""
    problems: list[str] = []
    rows: dict[str, AgentTraining] = {}
    root = training_root(artifacts)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        mine = os.path.join(entry.path, "mine.json")
        if entry.is_dir() and os.path.exists(mine):
            try:
                stats = MineStats.model_validate(read_json(Path(mine)))
            except (ArtifactError, ValidationError) as exc:
                problems.append(exc.message if isinstance(exc, ArtifactError) else f"{mine}: {exc}")
                continue
            rows.setdefault(stats.agent, AgentTraining(agent=stats.agent)).mined = stats
    for state in list_trainings(artifacts):
        rows.setdefault(state.agent, AgentTraining(agent=state.agent)).latest = state
    try:
        registry = read_registry(artifacts)
    except ArtifactError as exc:
        problems.append(exc.message)
        registry = Registry()
    for name, entry in registry.agents.items():
        rows.setdefault(name, AgentTraining(agent=name)).adapter = entry
    return [rows[k] for k in sorted(rows)], problems


def _trained_on_another(entry: RegistryEntry, model: Path | str | None) -> bool:
    """The adapter was trained on another base model than ``model`` (a GGUF file; None: unknown,
    so not said)."""
    return model is not None and Path(entry.base_model).resolve() != Path(model).resolve()


def served_adapters(
    artifacts: Path, backend: str = "llama.cpp", model: Path | None = None
) -> tuple[dict[str, Path], list[str]]:
    """The promoted adapters' files for a model server to load (adapter name -> file or folder),
    and what is wrong with the registry. An adapter whose file is gone, or (llama.cpp, with
    ``model`` given) that was trained on another base model, is left out, and said so."""
    problems: list[str] = []
    try:
        registry = read_registry(artifacts)
    except ArtifactError as exc:
        return {}, [exc.message]
    files: dict[str, Path] = {}
    for agent, entry in sorted(registry.agents.items()):
        rel = entry.peft if backend == "vllm" else entry.gguf
        if rel is None:
            problems.append(f"{agent}: adapter {entry.adapter} has no {backend} file")
            continue
        path = Path(artifacts) / rel
        if backend != "vllm" and _trained_on_another(entry, model):
            problems.append(
                f"{agent}: adapter {entry.adapter} was trained on {Path(entry.base_model).name}, "
                f"not on the served {Path(model).name}; {agent} uses the base model"
            )
            continue
        if not path.exists():
            problems.append(f"{agent}: adapter file {path} is gone; {agent} uses the base model")
            continue
        files[entry.adapter] = path.resolve()
    return files, problems


def agent_adapters(
    artifacts: Path,
    loaded: set[str] | None,
    agents: set[str] | None = None,
    model: Path | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Agent -> the promoted adapter its calls name, for the adapters the server has loaded
    (``loaded`` None: trust the registry), and the agents left on the base model, with why;
    of ``agents`` only, when given (the ones that server answers; ``model``, its model file)."""
    try:
        registry = read_registry(artifacts)
    except ArtifactError as exc:
        return {}, [exc.message]
    out: dict[str, str] = {}
    problems: list[str] = []
    for agent, entry in sorted(registry.agents.items()):
        if agents is not None and agent not in agents:
            continue
        trained_on = Path(entry.base_model)
        if _trained_on_another(entry, model):
            problems.append(
                f"{agent}: its promoted adapter {entry.adapter} was trained on "
                f"{trained_on.name}, and the server that answers {agent} runs "
                f"{Path(model).name}, so it uses the base model (serve {agent} on "
                f"{trained_on.name} to use the adapter)"
            )
            continue
        if loaded is not None and entry.adapter not in loaded:
            problems.append(
                f"{agent}: its promoted adapter {entry.adapter} is not loaded by the model "
                "server, so it uses the base model (restart the server to load it)"
            )
            continue
        out[agent] = entry.adapter
    return out, problems


def verifier_adapters(artifacts: Path) -> set[str]:
    """The promoted adapters that are verifiers (names on the model server); none when the
    registry cannot be read (:func:`agent_adapters` says why)."""
    try:
        registry = read_registry(artifacts)
    except ArtifactError:
        return set()
    return {e.adapter for e in registry.agents.values() if e.verifier}


class AgentLearn(BaseModel):
    """One agent in a run of the learn loop."""

    model_config = ConfigDict(extra="ignore")

    agent: str
    action: Literal["trained", "skipped", "failed"]
    why: str
    training: str | None = None
    examples: int = 0
    """Training examples mined for it."""
    new: int = 0
    """Of them, new since its last training."""
    steps: int | None = None
    minutes: float | None = None
    stopped: str | None = None
    evaluation: dict[str, Any] | None = None
    """The evaluation's counts, p-value and decision (without the per-task results)."""
    promoted: bool = False


class LearnRun(BaseModel):
    """``training/learn.json``: the last run of the learn loop."""

    model_config = ConfigDict(extra="ignore")

    started_at: datetime
    finished_at: datetime | None = None
    agents: list[AgentLearn] = Field(default_factory=list)


def read_learn(artifacts: Path) -> LearnRun | None:
    """The learn loop's last run; None when it never ran (or its record cannot be read)."""
    try:
        return LearnRun.model_validate(read_json(training_root(artifacts) / LEARN))
    except (FileNotFoundError, ArtifactError, ValidationError):
        return None
