"""A night's settings: one object, built once from the command line or a file, passed whole.

``pantheon night`` and ``pantheon engine`` both build a :class:`NightSettings` (the command line
over an optional ``--settings FILE``, TOML or JSON) and hand it to
:func:`~pantheon.core.run.night.run_night`, which builds the engine the same way for both: so an
engine started on another host with the night's own ``ARTIFACTS/settings.json`` runs what the
night runs. Every field is documented here, and the documentation's settings page is drawn from
these models.
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pantheon.core.errors import ConfigError
from pantheon.core.model.files import DEFAULT_MODEL
from pantheon.core.store.atomic import atomic_write_text
from pantheon.core.store.layout import SETTINGS_FILE
from pantheon.core.work.grounding import GROUNDED_MIN

__all__ = [
    "DEFAULT_CODE_MODEL",
    "Drain",
    "Endpoint",
    "Gates",
    "Models",
    "NightSettings",
    "Work",
    "load_settings",
    "settings_error",
    "write_night_settings",
]

DEFAULT_CODE_MODEL = "qwen2.5-coder-1.5b"
"""The writers' model in a night (codegen, doc.frontmatter): bench/codefix.py measures it
against the 0.5B model, which stays the reviewers'."""

_FROZEN = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class Endpoint(BaseModel):
    """A model server the operator runs (``url``), or none: the night serves its own, or the
    engine uses the one ``pantheon serve`` runs for the artifacts."""

    model_config = _FROZEN

    url: str | None = None
    """The model server's URL (an OpenAI-compatible API; local hosts only)."""
    more: tuple[str, ...] = ()
    """Further servers of the same model: the calls are spread over them all (a pool)."""
    backend: Literal["llama.cpp", "openvino", "vllm", "llama-cpp-python"] | None = None
    """What kind of server ``url`` is (None: llama.cpp, or what the served one says)."""
    allow_hosts: tuple[str, ...] = ()
    """Model hosts that are the operator's although they are not loopback or private."""
    stall_s: float | None = Field(120.0, gt=0)
    """A call that shows no progress this long is cancelled, posted again, then fails."""

    def limits(self) -> dict[str, float]:
        return {"stall_s": self.stall_s} if self.stall_s else {}

    @property
    def urls(self) -> tuple[str, ...]:
        return ((self.url,) if self.url else ()) + self.more


class Gates(BaseModel):
    """The reviewers' audits: κ and the canaries, and when they pause merges."""

    model_config = _FROZEN

    kappa_threshold: float = Field(0.6, ge=-1, le=1)
    """Merges pause when reviewer agreement κ falls under this ..."""
    kappa_min_pairs: int = Field(20, ge=1)
    """... over at least this many review pairs."""
    canary_every: int = Field(10, ge=0)
    """One in this many reviewed changes is planted again as a canary (0: none)."""
    canary_min: int = Field(5, ge=1)
    """Merges pause on the canaries only over at least this many of them ..."""
    canary_max_miss: float = Field(0.5, ge=0, le=1)
    """... when the reviewers passed more than this share of them (unless their calibration
    measured them as carrying no information)."""
    grounding_min: float = Field(GROUNDED_MIN, ge=0, le=1)
    """A docs description must have at least this share of its content words on its page: the
    writer is asked again, and the test gate fails it (0: not checked)."""

    def engine_kwargs(self) -> dict[str, Any]:
        return self.model_dump()


class Models(BaseModel):
    """The models the night serves, and how its servers share the machine."""

    model_config = _FROZEN

    model: str = DEFAULT_MODEL
    """The embedded server's model (a catalog name or a GGUF file): the reviewers' and the
    other agents'."""
    code_model: str | None = DEFAULT_CODE_MODEL
    """The writers' model (codegen, doc.frontmatter), on a second embedded server; None (or
    ``same``) shares ``model``'s, and so does naming ``model`` alone."""
    backend: Literal["llama.cpp", "openvino", "vllm"] = "llama.cpp"
    """The embedded servers' kind: llama.cpp's llama-server, Pantheon's own server over
    OpenVINO GenAI, or vLLM on a GPU host."""
    serve: bool = True
    """Start the embedded servers (without an ``endpoint``); False: use the one
    ``pantheon serve`` runs for the artifacts (``pantheon engine``'s default)."""
    servers: int = Field(1, ge=1)
    """Embedded servers of ``model``: more than one are a pool, the calls spread over them."""
    speculative: Literal["ngram", "none"] = "ngram"
    """llama.cpp's n-gram speculation: drafts from text already in the context."""
    cpu_share: Literal["auto", "turns", "split"] = "auto"
    """How the writers' server and the other share the CPU: ``turns`` (each every core, one
    computing at a time), ``split`` (each its part, at once), ``auto`` (turns where a part
    would be under 4 cores)."""
    reviewers_on: Literal["model", "code-model"] = "model"
    """Which server the reviewers ask, when there are two."""
    keep_server: bool = False
    """Leave the servers this night started running afterwards."""
    share_cpu: bool = False
    """Run even while another night serves its models on this host's CPU (both slower)."""

    @model_validator(mode="before")
    @classmethod
    def _model_alone_names_both(cls, data: Any) -> Any:
        """Naming ``model`` without ``code_model`` runs the writers on it too; ``same`` says
        so explicitly."""
        if isinstance(data, dict):
            data = dict(data)
            if "model" in data and "code_model" not in data:
                data["code_model"] = None
            if data.get("code_model") in ("same", data.get("model", DEFAULT_MODEL)):
                data["code_model"] = None
        return data


class Drain(BaseModel):
    """How the engine drains the queue."""

    model_config = _FROZEN

    concurrency: int | Literal["auto"] | None = None
    """Jobs at once; ``auto`` starts at 2 and doubles while the measured tokens/s pays; None:
    control.json's."""
    until_empty: bool = True
    """Stop when the queue is empty (a night always does; an engine may wait for more)."""
    until: datetime | None = None
    """Be done by then: no job starts that the time a job has taken says cannot finish."""
    lease_s: float = Field(60.0, gt=0)
    """How long a claimed job stays this engine's without renewal."""
    tick_s: float = Field(0.25, gt=0)
    """Seconds between the engine's looks at the queue and the controls."""
    fsync: bool = False
    """Flush every run artifact to disk before renaming it (survives power cuts; slower)."""
    metrics_every_s: float | None = Field(2.0, gt=0)
    """Seconds between samples in ``metrics/engine.jsonl`` (None: none)."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Serve the engine's figures in the Prometheus text format on 127.0.0.1:PORT."""

    @field_validator("concurrency")
    @classmethod
    def _at_least_one(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 1:
            raise ValueError("at least 1 job at once")
        return value

    @field_validator("until", mode="before")
    @classmethod
    def _a_time(cls, value: Any) -> Any:
        from pantheon.core.run.deadline import parse_until

        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                return parse_until(value)  # HH:MM: the next one
        return value


class Work(BaseModel):
    """What a night prepares before it drains: the demo repository, or the jobs found in
    the user's."""

    model_config = _FROZEN

    demo: bool = False
    """The demo night: the demo repository, prepared in the artifacts directory."""
    repo: Path | None = None
    """The git repository the night works on (with ``demo``: the demo one, once prepared)."""
    docs: int | None = Field(None, ge=0)
    """Only the first N docs jobs."""
    code: int | None = Field(None, ge=0)
    """Only the first N code jobs."""
    no_docs: bool = False
    """No docs jobs (only the code tasks)."""
    docs_glob: str = "docs/**/*.md"
    """The documentation pages of ``repo``."""
    tasks: Path | None = None
    """Explicit code tasks (JSON Lines: path, test, task) instead of running the tests."""
    test_command: str | None = None
    """How the repository runs its tests (default: its pyproject's, else pytest)."""
    remote: str | None = None
    """A shared git remote (a name of the clone's, or a URL) whose target branch the jobs
    start from and the merges land on, pushed (again on a race): for several engine hosts,
    each with its own clone."""


class NightSettings(BaseModel):
    """A night's (or one engine's) settings, whole."""

    model_config = _FROZEN

    artifacts: Path = Path("artifacts")
    """The artifacts directory: the queue, the controls and every run's files."""
    role: Literal["night", "engine"] = "night"
    """A night prepares its work and holds the artifacts; an engine drains what is queued."""
    join: bool = False
    """Drain alongside the night or engine already running on the artifacts."""
    queue: str | None = None
    """The queue: ``sqlite`` (the artifacts' own file, the default) or a PostgreSQL URL that
    engines on several hosts share; None: the one the artifacts already name."""
    sandbox: bool = True
    """Run model-written code in the bubblewrap sandbox (code jobs refuse to start without)."""
    models: Models = Field(default_factory=Models)
    endpoint: Endpoint = Field(default_factory=Endpoint)
    gates: Gates = Field(default_factory=Gates)
    drain: Drain = Field(default_factory=Drain)
    work: Work = Field(default_factory=Work)

    @field_validator("queue")
    @classmethod
    def _a_queue(cls, value: str | None) -> str | None:
        from pantheon.core.store.queueurl import check_queue_url

        return None if value is None else check_queue_url(value)

    @property
    def repo(self) -> Path | None:
        return self.work.repo

    @property
    def serves(self) -> bool:
        """Whether this process starts its own model servers."""
        return not self.endpoint.url and self.models.serve

    @property
    def writers_model(self) -> str | None:
        """The model of the writers' own server; None when they share the night's."""
        return self.models.code_model if self.serves else None

    def with_repo(self, repo: Path) -> NightSettings:
        return self.model_copy(update={"work": self.work.model_copy(update={"repo": repo})})

    def as_json(self) -> str:
        return self.model_dump_json(indent=2, exclude={"join"})


def settings_error(exc: ValidationError, where: str) -> ConfigError:
    """One line per wrong field, named by its place in the settings."""
    lines = []
    for error in exc.errors():
        place = ".".join(str(part) for part in error["loc"]) or "(top)"
        lines.append(f"{place}: {error['msg']}")
    return ConfigError(f"{where}: " + "; ".join(lines))


def load_settings(path: Path) -> dict[str, Any]:
    """A settings file's fields (TOML, or JSON by its suffix), checked against
    :class:`NightSettings`; ConfigError names the file and each wrong field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"settings file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ConfigError(f"settings file {path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path}: an object of settings, not {type(data).__name__}")
    try:
        NightSettings.model_validate(data)
    except ValidationError as exc:
        raise settings_error(exc, f"settings file {path}") from None
    return data


def write_night_settings(settings: NightSettings) -> Path:
    """The settings a night runs with, in ``ARTIFACTS/settings.json``: ``pantheon engine
    --settings`` on another host runs the same night."""
    path = settings.artifacts / SETTINGS_FILE
    atomic_write_text(path, settings.as_json() + "\n")
    return path
