"""Canaries planted in the night's real work: one in so many reviewed changes is copied to a
branch of its own with a defect planted in it (never merged), and the flow's gates and
reviewers are run on it again, to see whether they catch it. The record goes to
``canaries.jsonl`` (:mod:`pantheon.core.observe.canaries`); a canary never fails the job.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from pantheon.core.agents.base import NodeContext
from pantheon.core.flows.flow import Flow
from pantheon.core.model.client import LLMClient
from pantheon.core.model.safecall import CallLog
from pantheon.core.store.atomic import atomic_write_json
from pantheon.core.store.layout import CANARY_DIR, CANARY_FILE, worktrees_path
from pantheon.core.store.queue import Job
from pantheon.core.store.runs import RunDir, now_iso
from pantheon.core.work.git import GitError, JobWorkspace

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CanaryPlanting"]

log = logging.getLogger("pantheon.core.run.runner")


class CanaryPlanting:
    """The canary half of :class:`~pantheon.core.run.runner.Runner` (a mixin: it uses the
    runner's workspace, params, agents and model clients)."""

    artifacts: Path
    llm: LLMClient | None
    agent_llms: dict[str, LLMClient]
    canary_every: int
    on_canary: Callable[[], object] | None
    _docs_seen: list[dict[str, Any]]
    # and the runner's methods: _workspace(flow, job), _params(cls, given, at), _agent(cls)

    async def _maybe_canary(
        self,
        flow: Flow,
        job: Job,
        run: RunDir,
        outputs: dict[str, dict[str, Any]],
        reviewers: list[str],
    ) -> None:
        """Plant this change as a canary when it is due; never fails the job."""
        from pantheon.core.work.canary import is_due

        self._remember_docs(flow, job, outputs)
        if not self.canary_every or not is_due(job.run_id, self.canary_every):
            return
        if (run.path / CANARY_DIR / CANARY_FILE).exists():
            return
        try:
            await self._canary(flow, job, run, outputs, reviewers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a canary is an audit, never worth a job
            log.warning("run %s: no canary planted: %s: %s", run.name, type(exc).__name__, exc)

    def _remember_docs(self, flow: Flow, job: Job, outputs: dict[str, dict[str, Any]]) -> None:
        for node in flow.order:
            out = outputs.get(node) or {}
            if flow.agents[node].uses_model and isinstance(out.get("description"), str):
                entry = {"path": job.input.get("path"), **out}
                self._docs_seen = [*self._docs_seen[-49:], entry]

    async def _canary(
        self,
        flow: Flow,
        job: Job,
        run: RunDir,
        outputs: dict[str, dict[str, Any]],
        reviewers: list[str],
    ) -> None:
        from pantheon.core.observe.canaries import record_canary

        kind = flow.resolve_inputs(reviewers[0], job.input, outputs).get("kind")
        if kind not in ("docs", "code"):
            return
        real = await asyncio.to_thread(self._workspace, flow, job)
        planted = await asyncio.to_thread(self._plant, kind, job, real)
        if planted is None:
            log.info("run %s: no canary fits this change", run.name)
            return
        folder = run.path / CANARY_DIR
        folder.mkdir(parents=True, exist_ok=True)
        ws = await asyncio.to_thread(
            JobWorkspace.open,
            real.repo.path,
            flow=f"canary-{flow.name}",
            job_id=job.id,
            target=real.target,
            root=worktrees_path(self.artifacts),
        )
        try:
            for rel, text in planted.files.items():
                (ws.path / rel).write_text(text, encoding="utf-8")
            await asyncio.to_thread(ws.commit, f"canary ({planted.kind}): never merged")
            diff = await asyncio.to_thread(ws.diff)
            replayed = dict(outputs)
            verdicts: dict[str, Any] = {}
            gates: dict[str, Any] = {}
            last = max(flow.order.index(n) for n in reviewers)
            for node in flow.order[: last + 1]:
                cls = flow.agents[node]
                if cls.uses_model and not cls.reviewer:
                    continue  # the writer's output is the real change's
                if cls.reviewer and planted.must_fail_tests and all(gates.values()):
                    log.info("run %s: the planted mutation passes the tests; no canary", run.name)
                    return
                if cls.reviewer and not all(gates.values()):
                    break  # the gates stopped it: no reviewer would ever see this change
                data, error = await self._run_canary_node(flow, job, node, replayed, ws, folder)
                if cls.reviewer:
                    verdicts[node] = (
                        {"passed": data.get("passed"), "reasons": data.get("reasons", [])}
                        if data is not None
                        else {"passed": None, "error": error}
                    )
                elif data is not None:
                    replayed[node] = data
                    gates[node] = data.get("passed")
                else:
                    gates[node] = None
        finally:
            await asyncio.to_thread(real.repo.remove_worktree, ws.path)
            await asyncio.to_thread(real.repo.delete_branch, ws.branch)
        record = {
            "run": run.name,
            "job": job.id,
            "flow": flow.name,
            "kind": planted.kind,
            "change": kind,
            "what": planted.what,
            "right": False,
            "gates": gates,
            "verdicts": verdicts,
            "at": now_iso(),
        }
        atomic_write_json(folder / CANARY_FILE, {**record, "diff": diff})
        record_canary(self.artifacts, record)
        if self.on_canary is not None:
            done = self.on_canary()
            if inspect.isawaitable(done):
                await done
        caught = [n for n, v in verdicts.items() if v.get("passed") is False]
        log.info(
            "run %s: canary (%s) %s",
            run.name,
            planted.kind,
            "stopped by the gates before any review"
            if not verdicts
            else "caught by " + ", ".join(caught)
            if caught
            else "passed by every reviewer",
        )

    def _plant(self, kind: str, job: Job, real: JobWorkspace):
        """The planted defect for this change (None: none of the kinds fits it)."""
        from pantheon.core.work import canary
        from pantheon.core.work.doccheck import split_frontmatter

        path = str(job.input.get("path") or "")
        if real.dirty():
            real.commit("work in progress")
        seed = job.id
        for k in canary.LIVE_KINDS.get(kind, ()):
            if kind == "code":
                test_path = str(job.input.get("test") or "").split("::", 1)[0]
                try:
                    original = real.original(path)
                    if original is None:
                        return None  # a new file: there is no bug to plant back
                    planted = canary.plant_code(
                        k,
                        path=path,
                        test_path=test_path,
                        original=original,
                        fixed=(real.path / path).read_text(encoding="utf-8"),
                        test_source=(real.path / test_path).read_text(encoding="utf-8"),
                        seed=seed,
                    )
                except (GitError, OSError, ValueError):
                    planted = None
            else:
                meta, body = split_frontmatter((real.path / path).read_text(encoding="utf-8"))
                if meta is None:
                    return None
                others = [d for d in self._docs_seen if d.get("path") != path]
                other = others[seed % len(others)] if others else None
                planted = canary.plant_docs(k, path=path, meta=meta, body=body, other=other)
            if planted is not None:
                return planted
        return None

    async def _run_canary_node(
        self,
        flow: Flow,
        job: Job,
        node: str,
        outputs: dict[str, dict[str, Any]],
        ws: JobWorkspace,
        folder: Path,
    ) -> tuple[dict[str, Any] | None, str | None]:
        """One node of the flow on the canary's branch: (its output, or why it has none)."""
        cls = flow.agents[node]
        given = self._params(cls, flow.node(node).params, (flow.name, node))
        node_dir = folder / node
        node_dir.mkdir(parents=True, exist_ok=True)
        try:
            params = cls.Params.model_validate(given)
            agent_input = cls.Input.model_validate(flow.resolve_inputs(node, job.input, outputs))
            ctx = NodeContext(
                run_id=job.run_id,
                job_id=job.id,
                flow=flow.name,
                node=node,
                node_dir=node_dir,
                params=params,
                job_input=job.input,
                llm=self.agent_llms.get(cls.name, self.llm),
                calls=CallLog(node_dir),
                artifacts=self.artifacts,
                workspace=ws,
            )
            result = await self._agent(cls).run(agent_input, ctx)
            value = result if isinstance(result, BaseModel) else cls.Output.model_validate(result)
            return value.model_dump(mode="json"), None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"
