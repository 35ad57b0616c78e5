"""How a night and the engine reach their model servers, and which adapter each agent's calls
use: the operator's endpoint (one, or several as a pool) or the server ``pantheon serve`` runs
for the artifacts; the promoted adapters a server loads and the ones each agent is given."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pantheon.core.errors import ModelServerError, PantheonError
from pantheon.core.model.client import Backend, LLMClient
from pantheon.core.model.pool import ServerPool
from pantheon.core.run.settings import Endpoint

__all__ = ["adapter_files", "adapters_in_use", "connect", "pool_of"]

log = logging.getLogger("pantheon.core.run.night")


def pool_of(urls: Sequence[str], **client: Any) -> ServerPool:
    """One client over several servers; each retries once before its calls go elsewhere."""
    return ServerPool([LLMClient(u, retries=1, **client) for u in urls])


def connect(
    artifacts: Path, endpoint: Endpoint, *, required: bool = False
) -> LLMClient | ServerPool | None:
    """The model client: ``endpoint.url``, or the server `pantheon serve` runs for these
    artifacts; None (said in the log) when there is neither, or ModelServerError if
    ``required``."""
    from pantheon.core.model.server import ModelServer

    if endpoint.url and endpoint.more:
        return pool_of(
            endpoint.urls,
            backend=endpoint.backend or "llama.cpp",
            allow_hosts=list(endpoint.allow_hosts),
            **endpoint.limits(),
        )
    if endpoint.url:
        return LLMClient(
            endpoint.url,
            backend=endpoint.backend or "llama.cpp",
            allow_hosts=list(endpoint.allow_hosts),
            **endpoint.limits(),
        )
    state = ModelServer(artifacts).state()
    if state is not None:
        return LLMClient(
            state.endpoint,
            backend=endpoint.backend or state.backend,
            model=state.alias,
            adapters=state.adapters,
            allow_hosts=list(endpoint.allow_hosts),
            **endpoint.limits(),
        )
    if required:
        raise ModelServerError(
            "no model server: pass --endpoint URL or start one with `pantheon serve --detach`"
        )
    log.info(
        "no model server configured (--endpoint, or `pantheon serve --detach`): nodes of agents "
        "that use the model will fail"
    )
    return None


# -- the promoted adapters --------------------------------------------------------------------


async def adapters_in_use(
    artifacts: Path,
    llm: LLMClient | None,
    *,
    only: set[str] | None = None,
    exclude: set[str] | None = None,
    model: Path | None = None,
) -> dict[str, str]:
    """Agent -> the promoted adapter its calls use, among those the model server loaded (of
    the agents ``only`` names, or all but ``exclude``: the ones this server answers; ``model``,
    the file it serves, when known)."""
    from pantheon.core.learn.files import agent_adapters, read_registry

    if llm is None:
        return {}
    loaded = None
    if llm.backend is Backend.LLAMA_CPP:
        try:
            loaded = set(await llm.load_adapter_ids())
        except PantheonError as exc:
            log.warning("cannot ask the model server which adapters it loaded: %s", exc)
            loaded = set(llm.adapters)
    elif llm.backend is not Backend.VLLM:
        loaded = set()
    agents = only
    if exclude:
        try:
            agents = set(read_registry(artifacts).agents) - exclude
        except PantheonError:
            agents = None
    adapters, problems = agent_adapters(artifacts, loaded, agents, model)
    for problem in problems:
        log.warning("%s", problem)
    for agent, name in sorted(adapters.items()):
        log.info("agent %s uses its promoted adapter %s", agent, name)
    return adapters


def adapter_files(artifacts: Path, backend: str, model: str | None = None) -> list[str]:
    """The promoted adapters to load beside ``model`` (a catalog name or a file)."""
    from pantheon.core.learn.files import served_adapters
    from pantheon.core.model.files import CATALOG, ModelStore

    path = None
    if model is not None:
        path = ModelStore().path(model) if model in CATALOG else Path(model).expanduser()
    files, problems = served_adapters(artifacts, backend, path)
    for problem in problems:
        log.warning("%s", problem)
    return [str(path) for path in files.values()]
