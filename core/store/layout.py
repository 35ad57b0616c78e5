"""The artifacts directory's layout: the one module that knows where each file lives.

::

    artifacts/
      pantheon.db                       the durable job queue (queue.py)
      control.json                      operator controls (control.py)
      night.log                         the output of a night started with its console
      night-figures.txt                 the closing figures of the last night (run/night.py)
      canaries.jsonl                    one line per canary judged
      metrics/engine.jsonl              one metrics sample a line
      server/server.json, server.log    the model server (server/<name>/ for a second one)
      worktrees/                        the jobs' git worktrees
      runs/<flow>-<run id>/
        run.json                        flow, job, status, times, input, output
        FAILED.json                     the node that stopped the run, the error, the artifact
        canary/canary.json              the canary planted from this run's change, if any
        <node>/input.json               what the agent was given
        <node>/output.json              what it returned (validated)
        <node>/error.txt                why it failed
        <node>/calls.jsonl              each model call
        <node>/waiting.json             a model call of the node is in flight (since when)

A job works on the git branch ``pantheon/<flow>/<job id>`` (:func:`branch_name`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CALLS_FILE",
    "CANARIES_FILE",
    "CANARY_DIR",
    "CANARY_FILE",
    "CONTROL_FILE",
    "DB_FILE",
    "ERROR_FILE",
    "FAILED_FILE",
    "INPUT_FILE",
    "METRICS_FILE",
    "NIGHT_FIGURES_FILE",
    "NIGHT_LOG",
    "OUTPUT_FILE",
    "QUEUE_FILE",
    "RUNS",
    "RUN_FILE",
    "SERVER_DIR",
    "SERVER_LOG",
    "SERVER_STATE",
    "SETTINGS_FILE",
    "WAITING_FILE",
    "WORKTREES",
    "branch_name",
    "canaries_path",
    "metrics_path",
    "run_path",
    "runs_path",
    "server_path",
    "worktrees_path",
]

# -- the artifacts directory's top level ----------------------------------------------------

DB_FILE = "pantheon.db"
CONTROL_FILE = "control.json"
CANARIES_FILE = "canaries.jsonl"
METRICS_FILE = Path("metrics") / "engine.jsonl"
NIGHT_LOG = "night.log"
NIGHT_FIGURES_FILE = "night-figures.txt"
SETTINGS_FILE = "settings.json"
QUEUE_FILE = "queue.json"
"""The PostgreSQL queue the artifacts use, when not their own SQLite file."""
"""The settings the last night ran with (``pantheon engine --settings`` runs the same)."""
SERVER_DIR = "server"
WORKTREES = "worktrees"
RUNS = "runs"

# -- in a server's folder -------------------------------------------------------------------

SERVER_STATE = "server.json"
SERVER_LOG = "server.log"

# -- in a run's folder ----------------------------------------------------------------------

RUN_FILE = "run.json"
FAILED_FILE = "FAILED.json"
CANARY_DIR = "canary"
CANARY_FILE = "canary.json"

# -- in a node's folder ---------------------------------------------------------------------

INPUT_FILE = "input.json"
OUTPUT_FILE = "output.json"
ERROR_FILE = "error.txt"
CALLS_FILE = "calls.jsonl"
WAITING_FILE = "waiting.json"
"""``runs/<run>/<node>/waiting.json``: a model call of the node is in flight (since when)."""


def runs_path(artifacts: Path) -> Path:
    """``runs/``: one folder per run."""
    return Path(artifacts) / RUNS


def run_path(artifacts: Path, run_name: str) -> Path:
    """``runs/<flow>-<run id>/``."""
    return Path(artifacts) / RUNS / run_name


def metrics_path(artifacts: Path) -> Path:
    """``metrics/engine.jsonl``."""
    return Path(artifacts) / METRICS_FILE


def canaries_path(artifacts: Path) -> Path:
    """``canaries.jsonl``."""
    return Path(artifacts) / CANARIES_FILE


def server_path(artifacts: Path, name: str | None = None) -> Path:
    """``server/``, or ``server/<name>/`` for a second server of the same night."""
    root = Path(artifacts) / SERVER_DIR
    return root / name if name else root


def worktrees_path(artifacts: Path) -> Path:
    """``worktrees/``: where the jobs' git worktrees live."""
    return Path(artifacts) / WORKTREES


def branch_name(flow: str, job_id: int | str) -> str:
    """The git branch a job works on: ``pantheon/<flow>/<job id>``."""
    return f"pantheon/{flow}/{job_id}"
