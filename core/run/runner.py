"""Run one job: the nodes of its flow in topological order, each recorded in the artifacts.

Nodes whose inputs are ready run together (two reviewers of the same change, say). A node
whose valid ``output.json`` is already on disk is never run again, so a run picks up where a
crash left it. A node that fails, or a gate whose output says ``passed: false``, stops the run
with ``FAILED.json``; nothing falls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from pantheon.core.agents.base import Agent, AgentRegistry, NodeContext
from pantheon.core.errors import NodeError, PantheonError, ServerUnavailable
from pantheon.core.flows.flow import Flow, parse_flow
from pantheon.core.learn.files import verifier_adapters
from pantheon.core.model.client import LLMClient
from pantheon.core.model.safecall import CallLog
from pantheon.core.run.canaries import CanaryPlanting
from pantheon.core.store.layout import OUTPUT_FILE, RUN_FILE, branch_name, worktrees_path
from pantheon.core.store.queue import Job, JobQueue, NodeRow
from pantheon.core.store.runs import FailedRecord, RunDir, RunRecord, now_iso
from pantheon.core.work.git import GitError, GitRepo, JobWorkspace

__all__ = ["JobOutcome", "Runner"]

log = logging.getLogger(__name__)

Outcome = Literal["done", "failed", "stopped"]


@dataclass(slots=True)
class JobOutcome:
    status: Outcome
    error: str | None = None
    ran: int = 0
    """Nodes executed in this attempt."""
    skipped: int = 0
    """Nodes whose output was already there."""
    nodes: list[NodeRow] = field(default_factory=list)
    """The nodes this attempt finished, for the queue's per-agent counts."""
    next_agent: str | None = None
    """The agent the job runs next, when it stopped before its end."""
    review: tuple[bool, bool] | None = None
    """The verdicts of the run's first two reviewers, when both judged."""


@dataclass(slots=True)
class _NodeResult:
    node: str
    ok: bool
    output: dict[str, Any] | None
    error: str | None
    artifact: Path | None
    seconds: float
    unavailable: bool = False
    """The model server did not answer: the node waits for it, it did not fail."""


class Runner(CanaryPlanting):
    """Runs jobs of any flow stored in the queue."""

    def __init__(
        self,
        artifacts: Path,
        registry: AgentRegistry,
        queue: JobQueue,
        *,
        fsync: bool = False,
        llm: LLMClient | None = None,
        on_node: Callable[[Job, str, str, bool, float], None] | None = None,
        adapters: dict[str, str] | None = None,
        agent_llms: dict[str, LLMClient] | None = None,
        canary_every: int = 0,
        on_canary: Callable[[], object] | None = None,
        clone: Path | None = None,
        grounding_min: float | None = None,
    ) -> None:
        self.artifacts = Path(artifacts)
        self.registry = registry
        self.queue = queue
        self.fsync = fsync
        self.llm = llm
        self.agent_llms: dict[str, LLMClient] = dict(agent_llms or {})
        """Agent name -> the model server its calls go to, where it is not ``llm``'s."""
        self.on_node = on_node
        self.adapters: dict[str, str] = dict(adapters or {})
        """Agent name -> the LoRA adapter its model calls use, unless its node names one."""
        self.verifiers: set[str] = verifier_adapters(self.artifacts)
        """Of those, the verifiers: trained on one verdict word, so only scored nodes use them."""
        self.grounding_min = grounding_min
        """A docs description's least grounding on its page, for the nodes that give none
        (None: each agent's own default)."""
        self.thresholds: dict[tuple[str, str], float] = self._calibrated()
        """(flow, node) -> a scored reviewer's calibrated threshold (``pantheon reviewers``)."""
        self.stop_between_nodes = False
        """Set by a graceful stop: finish the nodes in flight, start no new ones."""
        self.current: dict[int, str] = {}
        """Job id -> the agent it is running now."""
        self.canary_every = canary_every
        """One in this many reviewed changes is also planted as a canary (0: none)."""
        self.on_canary = on_canary
        """Called after each canary is recorded (before the change it came from may merge);
        awaited when it returns an awaitable."""
        self.clone = clone
        """This host's clone of the jobs' repository, where it is not the path the jobs name
        (an engine on another host, each with its own clone of a shared remote)."""
        self._docs_seen: list[dict[str, Any]] = []
        """Frontmatter of this night's docs changes (for a canary about another page)."""
        self._flows: dict[str, Flow] = {}
        self._synced: set[int] = set()
        """Jobs whose shared target was fetched when their start checked it had landed."""
        self._agents: dict[type[Agent], Agent] = {}

    def flow_for(self, job: Job) -> Flow:
        flow = self._flows.get(job.flow_sha)
        if flow is None:
            source, text = self.queue.flow_text(job.flow_sha)
            flow = parse_flow(text, self.registry, source=source)
            self._flows[job.flow_sha] = flow
        return flow

    def _landed(self, flow: Flow, job: Job) -> str | None:
        """The merge that landed this job on its shared remote already, if one did."""
        from pantheon.core.work.remote import landed

        if not any(a.uses_workspace for a in flow.agents.values()):
            return None
        repo = GitRepo(self.clone or Path(str(job.input.get("repo"))))
        target = str(job.input.get("target") or "main")
        found = landed(repo, str(job.input["remote"]), target, branch_name(flow.name, job.id))
        if found is None:  # it runs: its worktree starts from the target just fetched
            self._synced.add(job.id)
        return found

    def _workspace(self, flow: Flow, job: Job) -> JobWorkspace:
        synced = job.id in self._synced
        self._synced.discard(job.id)
        repo = job.input.get("repo")
        if not repo:
            raise GitError(
                f"flow {flow.name!r} works on a git repository; give the job a 'repo' input"
            )
        return JobWorkspace.open(
            self.clone or Path(repo),
            flow=flow.name,
            job_id=job.id,
            target=str(job.input.get("target") or "main"),
            root=worktrees_path(self.artifacts),
            remote=job.input.get("remote") or None,
            synced=synced,
        )

    def _params(
        self, cls: type[Agent], given: dict[str, Any], at: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """A node's params (``at``: its flow and node), with its agent's promoted adapter
        unless the node names one (a verifier adapter: only on a scored node, since it answers
        one verdict word), a scored reviewer's calibrated threshold and the night's docs
        grounding minimum, each unless the node gives one."""
        adapter = self.adapters.get(cls.name)
        if adapter in self.verifiers and not given.get("scored"):
            adapter = None
        if adapter and "adapter" in cls.Params.model_fields and not given.get("adapter"):
            given = {**given, "adapter": adapter}
        grounded = self.grounding_min is not None and "grounded_min" in cls.Params.model_fields
        if grounded and "grounded_min" not in given:
            given = {**given, "grounded_min": self.grounding_min}
        calibrated = self.thresholds.get(at) if at else None
        if calibrated and given.get("scored") and "threshold" not in given:
            given = {**given, "threshold": calibrated}
        return given

    def _calibrated(self) -> dict[tuple[str, str], float]:
        """(flow, node) -> the threshold each scored reviewer's calibration fit."""
        from pantheon.core.run.calibrate import calibrated_thresholds

        llm = self.agent_llms.get("review.peer", self.llm)
        adapter = self.adapters.get("review.peer")
        found = calibrated_thresholds(self.artifacts, getattr(llm, "model", None), adapter)
        for (flow, node), c in sorted(found.items()):
            log.info(
                "%s's %s scores against its calibrated threshold %.3f (%s)",
                flow,
                node,
                c.threshold,
                c.describe(),
            )
        return {key: c.threshold for key, c in found.items()}

    def _agent(self, cls: type[Agent]) -> Agent:
        agent = self._agents.get(cls)
        if agent is None:
            agent = self._agents[cls] = cls()
        return agent

    async def run(self, job: Job) -> JobOutcome:
        run = RunDir(self.artifacts, job.run_name, fsync=self.fsync)
        fresh = run.prepare()
        earlier = None if fresh else run.read_record()
        outcome = JobOutcome("done")
        record = RunRecord(
            run_id=job.run_id,
            job_id=job.id,
            flow=job.flow,
            flow_sha256=job.flow_sha,
            status="running",
            input=job.input,
            started_at=earlier.started_at if earlier and earlier.started_at else now_iso(),
            attempts=job.attempts,
        )
        try:
            flow = self.flow_for(job)
        except PantheonError as exc:
            return self._fail_run(run, record, "(flow)", "(flow)", str(exc), None, outcome)

        if fresh and job.input.get("remote") and getattr(self.queue, "hosts_share", False):
            merged = await asyncio.to_thread(self._landed, flow, job)
            if merged is not None:  # an engine that died after merging it, before recording
                record.status = "done"
                record.output = {"merged": True, "commit": merged, "landed_before": True}
                record.finished_at = now_iso()
                run.write_record(record)
                log.info("job %d was merged already (%s): nothing to run", job.id, merged[:12])
                return outcome
        outputs: dict[str, dict[str, Any]] = {}
        done: set[str] = set()
        if not fresh:
            run.clear_failed()
            for node in flow.order:
                agent_cls = flow.agents[node]
                out, why = run.read_output(node, agent_cls.Output)
                if why:
                    log.warning("run %s node %s: %s; running the node again", run.name, node, why)
                stale = out is not None and not flow.deps[node] <= done
                if stale:
                    log.info("run %s node %s: an input runs again, so it does too", run.name, node)
                if out is None or stale or (agent_cls.gate and not getattr(out, "passed", True)):
                    run.clear_error(node)
                    continue
                outputs[node] = out.model_dump(mode="json")
                done.add(node)
                record.nodes[node] = "skipped"
                outcome.skipped += 1
        for node in flow.order:
            record.nodes.setdefault(node, "pending")
        run.write_record(record)

        remaining = [n for n in flow.order if n not in done]
        try:
            while remaining:
                if self.stop_between_nodes:
                    record.status = "stopped"
                    run.write_record(record)
                    outcome.status = "stopped"
                    outcome.next_agent = flow.agents[remaining[0]].name
                    return outcome
                ready = [n for n in remaining if flow.deps[n] <= done]
                self.current[job.id] = flow.agents[ready[0]].name
                results = await asyncio.gather(
                    *(self._run_node(flow, job, run, n, outputs) for n in ready)
                )
                waiting = next((r for r in results if r.unavailable), None)
                if waiting is not None:
                    for res in results:
                        if res.ok and res.output is not None:
                            outputs[res.node] = res.output
                            done.add(res.node)
                            record.nodes[res.node] = "done"
                    record.status = "stopped"
                    record.error = waiting.error
                    run.write_record(record)
                    outcome.status = "stopped"
                    outcome.error = waiting.error
                    outcome.next_agent = flow.agents[waiting.node].name
                    return outcome
                outcome.ran += len(results)
                failure: _NodeResult | None = None
                for res in results:
                    agent_name = flow.agents[res.node].name
                    record.nodes[res.node] = "done" if res.ok else "failed"
                    outcome.nodes.append(
                        NodeRow(res.node, agent_name, "done" if res.ok else "failed", res.seconds)
                    )
                    if res.output is not None:
                        outputs[res.node] = res.output
                    if res.ok:
                        done.add(res.node)
                    elif failure is None:
                        failure = res
                    if self.on_node is not None:
                        self.on_node(job, res.node, agent_name, res.ok, res.seconds)
                finished = {r.node for r in results}
                remaining = [n for n in remaining if n not in finished]
                reviewers = [n for n in flow.order if flow.agents[n].reviewer]
                if reviewers and finished & set(reviewers) and all(n in outputs for n in reviewers):
                    await self._maybe_canary(flow, job, run, outputs, reviewers)
                if failure is not None:
                    agent_name = flow.agents[failure.node].name
                    outcome.review = self._review_pair(flow, outputs)
                    return self._fail_run(
                        run,
                        record,
                        failure.node,
                        agent_name,
                        failure.error or "",
                        failure.artifact,
                        outcome,
                    )
        except asyncio.CancelledError:
            record.status = "stopped"
            run.write_record(record)
            raise
        finally:
            self.current.pop(job.id, None)

        outcome.review = self._review_pair(flow, outputs)
        record.status = "done"
        record.output = outputs.get(flow.output_node)
        record.finished_at = now_iso()
        run.write_record(record)
        return outcome

    @staticmethod
    def _review_pair(flow: Flow, outputs: dict[str, dict[str, Any]]) -> tuple[bool, bool] | None:
        verdicts = [
            bool(outputs[n].get("passed"))
            for n in flow.order
            if flow.agents[n].reviewer and n in outputs
        ]
        return (verdicts[0], verdicts[1]) if len(verdicts) >= 2 else None

    def _fail_run(
        self,
        run: RunDir,
        record: RunRecord,
        node: str,
        agent: str,
        error: str,
        artifact: Path | None,
        outcome: JobOutcome,
    ) -> JobOutcome:
        first_line = error.strip().splitlines()[0] if error.strip() else "failed"
        if artifact is None:
            artifact = run.write_error(node, error) if node != "(flow)" else run.path / RUN_FILE
        run.write_failed(
            FailedRecord(
                node=node, agent=agent, error=error, artifact=run.rel(artifact), at=now_iso()
            )
        )
        record.status = "failed"
        record.error = f"{node}: {first_line}"
        record.finished_at = now_iso()
        run.write_record(record)
        outcome.status = "failed"
        outcome.error = record.error
        return outcome

    async def _run_node(
        self, flow: Flow, job: Job, run: RunDir, node: str, outputs: dict[str, dict[str, Any]]
    ) -> _NodeResult:
        """Run one node; every way it can go wrong becomes a recorded result, never an escape."""
        t0 = time.perf_counter()
        try:
            return await self._run_node_inner(flow, job, run, node, outputs, t0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the artifacts themselves failed (a full disk, say)
            error = f"node {node!r} could not be recorded: {type(exc).__name__}: {exc}"
            path = None
            with contextlib.suppress(Exception):
                path = run.write_error(node, error)
            return _NodeResult(node, False, None, error, path, time.perf_counter() - t0)

    async def _run_node_inner(
        self,
        flow: Flow,
        job: Job,
        run: RunDir,
        node: str,
        outputs: dict[str, dict[str, Any]],
        t0: float,
    ) -> _NodeResult:
        agent_cls = flow.agents[node]
        spec = flow.node(node)

        def failed(error: str) -> _NodeResult:
            path = run.write_error(node, error)
            return _NodeResult(node, False, None, error, path, time.perf_counter() - t0)

        raw = flow.resolve_inputs(node, job.input, outputs)
        run.write_input(node, raw)
        try:
            given = self._params(agent_cls, spec.params, (flow.name, node))
            params = agent_cls.Params.model_validate(given)
            agent_input = agent_cls.Input.model_validate(raw)
        except ValidationError as exc:
            return failed(
                f"the input of node {node!r} does not fit agent {agent_cls.name!r}:\n{exc}"
            )
        llm = self.agent_llms.get(agent_cls.name, self.llm)
        if llm is not None:
            llm = llm.routed(agent_cls.name)  # a pool keeps an agent on its server
        if agent_cls.uses_model and llm is None:
            return failed(
                f"agent {agent_cls.name!r} uses the model, but no model server is configured",
            )
        workspace = None
        if agent_cls.uses_workspace:
            try:
                workspace = await asyncio.to_thread(self._workspace, flow, job)
            except PantheonError as exc:
                return failed(f"node {node!r} has no workspace: {exc}")
        ctx = NodeContext(
            run_id=job.run_id,
            job_id=job.id,
            flow=flow.name,
            node=node,
            node_dir=run.node_dir(node),
            params=params,
            job_input=job.input,
            llm=llm,
            calls=CallLog(run.node_dir(node)),
            artifacts=self.artifacts,
            workspace=workspace,
        )
        try:
            result = await self._agent(agent_cls).run(agent_input, ctx)
        except asyncio.CancelledError:
            raise
        except ServerUnavailable as exc:
            return _NodeResult(
                node, False, None, str(exc), None, time.perf_counter() - t0, unavailable=True
            )
        except NodeError as exc:
            return failed(str(exc))
        except PantheonError as exc:
            return failed(f"{exc.title}: {exc}")
        except Exception as exc:
            tb = "".join(traceback.format_exception(exc))
            return failed(f"agent {agent_cls.name!r} raised {type(exc).__name__}: {exc}\n\n{tb}")
        try:
            value: BaseModel = (
                result
                if isinstance(result, agent_cls.Output)
                else agent_cls.Output.model_validate(
                    result.model_dump() if isinstance(result, BaseModel) else result
                )
            )
            data = value.model_dump(mode="json")
        except (ValidationError, ValueError, TypeError) as exc:
            return failed(f"agent {agent_cls.name!r} returned an output that does not fit:\n{exc}")
        run.write_output(node, data)
        seconds = time.perf_counter() - t0
        if agent_cls.gate and not data.get("passed", False):
            reasons = data.get("reasons") or data.get("reason") or ""
            if isinstance(reasons, list):
                reasons = "; ".join(str(r) for r in reasons)
            error = f"{agent_cls.name} did not pass" + (f": {reasons}" if reasons else "")
            return _NodeResult(node, False, data, error, run.node_dir(node) / OUTPUT_FILE, seconds)
        return _NodeResult(node, True, data, None, None, seconds)
