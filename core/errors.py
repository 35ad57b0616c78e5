"""The errors Pantheon raises, one tree, each with a title and a message meant for the operator.

Each is defined here unless its line starts with its module (under ``pantheon``).

    PantheonError               every error raised on purpose: a title, a message, perhaps a hint
    ├── FlowError               a flow file that cannot run (syntax, unknown agent, cycle, types)
    ├── AgentError              an agent that cannot be loaded or registered
    ├── QueueError              the job queue database (locked, corrupt, unknown job)
    ├── ArtifactError           the artifacts directory (missing, read-only, corrupt file)
    ├── NodeError               one node of one run failed (stops that run, never the night)
    ├── ConfigError             a control or configuration file that cannot be used
    ├── ModelServerError        the model server refused or failed a request
    │   ├── ServerUnavailable   ... or is not answering at all (work waits, never fails)
    │   ├── ModelStalled        ... or a call made no progress (cancelled; its node fails)
    │   └── _RepackFault        core.model.server: a crash warming up repacked weights (restarted)
    ├── EndpointRefused         an endpoint off this machine and its network: never contacted
    ├── ReplyError              a model reply that is not one JSON object fitting the schema
    ├── ModelStoreError         a model file missing, or with the wrong hash
    ├── NightRunning            core.run.nightlock: a night already drains this artifacts directory
    ├── ReviewError             core.morning.review: a merge, reject or revert that cannot be done
    ├── RepoError               core.work.discover: a repository the night cannot work on
    ├── GitError                core.work.git: a git command that failed, or ran over 2 minutes
    ├── TestCommandError        core.work.testcmd: the repository's test command cannot run here
    ├── UntraceableError        core.work.suite: tests that cannot be traced one by one (not pytest)
    ├── SandboxError            core.work.sandbox: model-written code would run, with no sandbox
    ├── ToolError               core.work.tools: a tool call that cannot be carried out
    ├── CorpusError             core.work.realbugs: a corpus library that cannot be fetched
    ├── TrainingError           trainer.options: a training that cannot start or go on
    │   ├── NotEnoughData       trainer.options: too few green examples, or all with one label
    │   └── TrainingInterrupted trainer.options: stopped; its checkpoint is kept to resume from
    ├── EvaluationError         trainer.options: an adapter that cannot be judged or rolled back
    └── GGUFConversionError     trainer.gguf_lora: an adapter that cannot be written for llama.cpp

Two more never reach the operator: they are caught where they are raised.

    CandidateError              core.work.edits: a reply that gives no fix (that candidate fails)
    ServerBusy                  core.model.ovpipe: the OpenVINO pipeline is loading (a 503 reply)

The core raises; the command line and the console decide how to show it.
"""

from __future__ import annotations

EXIT_DISK_FULL = 75
"""The exit code of a night that stopped because its disk stayed full (``EX_TEMPFAIL``: run it
again when there is room; the jobs left resume where they were)."""

EXIT_INTERRUPTED = 130
"""The exit code of a night stopped by the operator (a signal, ``pantheon stop``) before its
queue was empty: as a shell reports an interrupted command. The jobs left resume next time."""

__all__ = [
    "EXIT_DISK_FULL",
    "EXIT_INTERRUPTED",
    "AgentError",
    "ArtifactError",
    "ConfigError",
    "EndpointRefused",
    "FlowError",
    "ModelServerError",
    "ModelStalled",
    "ModelStoreError",
    "NodeError",
    "PantheonError",
    "QueueError",
    "ReplyError",
    "ServerUnavailable",
]


class PantheonError(Exception):
    """Base of every error Pantheon raises on purpose."""

    title = "Pantheon error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class FlowError(PantheonError):
    """A flow file that cannot run; ``problems`` lists each problem with its place."""

    title = "Invalid flow"

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None):
        self.problems = problems or [message]
        super().__init__(message, hint=hint)


class AgentError(PantheonError):
    title = "Agent error"


class QueueError(PantheonError):
    title = "Queue error"


class ArtifactError(PantheonError):
    title = "Artifacts error"


class NodeError(PantheonError):
    """One node failed. Carries the node id so the run's FAILED.json can name it."""

    title = "Node failed"

    def __init__(self, node: str, message: str, *, hint: str | None = None) -> None:
        self.node = node
        super().__init__(message, hint=hint)


class ConfigError(PantheonError):
    title = "Configuration error"


class ModelServerError(PantheonError):
    """The model server refused, failed, or is not answering."""

    title = "Model server error"


class ServerUnavailable(ModelServerError):
    """The model server is not answering at all: the work waits, it does not fail."""

    title = "Model server not answering"


class ModelStalled(ModelServerError):
    """A model call that made no progress for too long (or ran past its deadline): it was
    cancelled on the server, and the node fails with the wait it saw."""

    title = "Model call stalled"

    def __init__(self, message: str, *, waited_s: float, hint: str | None = None) -> None:
        self.waited_s = waited_s
        super().__init__(message, hint=hint)


class EndpointRefused(PantheonError):
    """An endpoint that is not on this machine or the operator's network: never contacted."""

    title = "Endpoint refused"


class ReplyError(PantheonError):
    """A model reply that is not exactly one JSON object fitting the agent's schema."""

    title = "Unusable model reply"

    def __init__(self, message: str, *, raw: str = "", hint: str | None = None) -> None:
        self.raw = raw
        super().__init__(message, hint=hint)


class ModelStoreError(PantheonError):
    """A model file that is missing, or whose hash is wrong."""

    title = "Model store error"
