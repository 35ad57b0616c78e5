"""The command lines that start each backend's server: llama.cpp's ``llama-server`` and vLLM's
``vllm serve`` (the OpenVINO server's is in :mod:`pantheon.core.model.ovserve`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pantheon.core.errors import ModelServerError
from pantheon.core.model.llamabin import (
    artifact_name,
    cpu_faults_on_repack,
    find_llama_binary,
    llama_environment,
)

if TYPE_CHECKING:
    from pantheon.core.model.server import ServerConfig

__all__ = ["NGRAM_SPECULATION", "NO_REPACK", "llama_command", "vllm_command"]

NO_REPACK = "--no-repack"
"""llama-server without weight repacking: what a CPU that faults on its repacked kernels needs."""


NGRAM_SPECULATION = [
    "--spec-type",
    "ngram-simple",
    "--spec-ngram-simple-size-n",
    "8",
    "--spec-ngram-simple-size-m",
    "16",
]
"""llama-server's n-gram speculation: when the last 8 tokens occurred earlier in the context,
the 16 that followed them there are drafted and verified in one batch. On a 2-core CPU, a
1.5B model rewriting a file: 1.47× the generated tokens/s at c = 1 and 1.49× at c = 4, 85 % of
the drafts accepted (``bench/speculation.py``)."""


def vllm_command(
    cfg: ServerConfig, model_path: Path, alias: str
) -> tuple[list[str], dict[str, str]]:
    exe = shutil.which("vllm")
    if exe is None:
        raise ModelServerError(
            "vLLM is not installed on this host",
            hint="on a GPU host: pip install vllm; or point --endpoint at a vLLM server you run",
        )
    cmd = [
        exe,
        "serve",
        str(model_path),
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--served-model-name",
        alias,
        "--max-num-seqs",
        str(cfg.parallel),
        "--max-model-len",
        str(cfg.ctx_per_slot),
    ]
    if cfg.adapters:
        cmd += ["--enable-lora", "--max-loras", str(len(cfg.adapters)), "--lora-modules"]
        cmd += [f"{artifact_name(a)}={a}" for a in cfg.adapters]
    return cmd + cfg.extra_args, dict(os.environ)


def llama_command(
    cfg: ServerConfig, model_path: Path, alias: str
) -> tuple[list[str], dict[str, str]]:
    """``llama-server`` on loopback with ``cfg.parallel`` slots, continuous batching and its
    Prometheus metrics; adapters loaded but not applied (each request names its own); n-gram
    speculation unless ``cfg.speculative`` is ``"none"``; without weight repacking where this
    build was seen to fault on it."""
    binary = find_llama_binary()
    cmd = [
        str(binary),
        "-m",
        str(model_path),
        "-a",
        alias,
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "-np",
        str(cfg.parallel),
        "-c",
        str(cfg.ctx_per_slot * cfg.parallel),
        "--cont-batching",
        "--metrics",
    ]
    if cfg.threads:
        cmd += ["-t", str(cfg.threads)]
    if cfg.adapters:
        cmd += ["--lora", ",".join(cfg.adapters), "--lora-init-without-apply"]
    if cfg.speculative == "ngram" and "--spec-type" not in cfg.extra_args:
        cmd += NGRAM_SPECULATION
    if cpu_faults_on_repack(binary.parent) and NO_REPACK not in cfg.extra_args:
        cmd.append(NO_REPACK)
    return cmd + cfg.extra_args, llama_environment(binary.parent)
