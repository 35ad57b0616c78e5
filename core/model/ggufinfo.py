"""What a GGUF model file holds, read from its header alone: the architecture and the type of
each tensor — enough to say which backend can serve it before a server is started.

llama.cpp reads every GGUF file it was built for. OpenVINO GenAI's GGUF reader takes fewer
tensor types and architectures (:data:`OPENVINO_TYPES`, :data:`OPENVINO_ARCHS`), so a file it
cannot take is refused with the reason instead of failing minutes into a model load.

Only the header is read (a few megabytes at most: the tokenizer's vocabulary is the largest part);
the ``gguf`` package's reader maps and decodes every tensor, seconds for a small model, which the
model list cannot afford.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pantheon.core.errors import ModelStoreError

__all__ = [
    "OPENVINO_ARCHS",
    "OPENVINO_TYPES",
    "GGUFInfo",
    "backends_for",
    "openvino_problem",
    "read_gguf_info",
]

MAGIC = b"GGUF"

# ggml's tensor type ids (ggml.h, enum ggml_type)
TYPE_NAMES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    30: "BF16",
}

OPENVINO_TYPES = frozenset({"F32", "F16", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "Q8_0"})
"""The tensor types OpenVINO GenAI's GGUF reader converts (a Q5_0 tensor fails its load)."""
OPENVINO_ARCHS = frozenset({"llama", "qwen2", "qwen3"})
"""The architectures it builds a model graph for from a GGUF file."""

# metadata value types (gguf.md): fixed sizes, 8 = string, 9 = array
_SCALAR = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    path: Path
    version: int
    architecture: str
    tensor_types: Counter[str]
    """How many tensors of each type."""
    shape: dict[str, int] = field(default_factory=dict)
    """The architecture's sizes: block_count, embedding_length, attention.head_count,
    attention.head_count_kv (those the file names)."""

    @property
    def tensors(self) -> int:
        return sum(self.tensor_types.values())

    def kv_bytes_per_token(self) -> int | None:
        """The KV cache one token takes in f16 (keys and values of every layer); None when the
        file does not say its sizes."""
        try:
            layers = self.shape["block_count"]
            heads = self.shape["attention.head_count"]
            kv_heads = self.shape.get("attention.head_count_kv", heads)
            width = self.shape["embedding_length"]
        except KeyError:
            return None
        return 2 * layers * kv_heads * (width // max(heads, 1)) * 2


class _Reader:
    def __init__(self, fh: BinaryIO, path: Path) -> None:
        self.fh, self.path = fh, path

    def take(self, fmt: str) -> int | float | bool:
        size = struct.calcsize("<" + fmt)
        raw = self.fh.read(size)
        if len(raw) != size:
            raise ModelStoreError(f"{self.path} ends inside its GGUF header: the file is cut")
        return struct.unpack("<" + fmt, raw)[0]

    def string(self) -> str:
        n = int(self.take("Q"))
        if n > 1 << 24:
            raise ModelStoreError(f"{self.path}: a GGUF string of {n} bytes; the header is corrupt")
        raw = self.fh.read(n)
        if len(raw) != n:
            raise ModelStoreError(f"{self.path} ends inside its GGUF header: the file is cut")
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int) -> object:
        if kind in _SCALAR:
            return self.take(_SCALAR[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = int(self.take("I")), int(self.take("Q"))
            if item in _SCALAR:  # skip the values: only their size matters
                self.fh.seek(struct.calcsize("<" + _SCALAR[item]) * count, 1)
            else:
                for _ in range(count):
                    self.value(item)
            return None
        raise ModelStoreError(
            f"{self.path}: unknown GGUF metadata type {kind}; the header is corrupt"
        )


def read_gguf_info(path: Path) -> GGUFInfo:
    """The architecture and tensor types of a GGUF file; ModelStoreError when it is not one."""
    path = Path(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ModelStoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        if fh.read(4) != MAGIC:
            raise ModelStoreError(f"{path} is not a GGUF model file (no GGUF magic)")
        r = _Reader(fh, path)
        version = int(r.take("I"))
        if version < 2:
            raise ModelStoreError(f"{path} is GGUF version {version}; version 2 or later is read")
        n_tensors, n_kv = int(r.take("Q")), int(r.take("Q"))
        arch = ""
        meta: dict[str, int] = {}
        for _ in range(n_kv):
            key = r.string()
            value = r.value(int(r.take("I")))
            if key == "general.architecture" and isinstance(value, str):
                arch = value
            elif isinstance(value, int) and not isinstance(value, bool):
                meta[key] = value
        types: Counter[str] = Counter()
        for _ in range(n_tensors):
            r.string()  # the tensor's name
            dims = int(r.take("I"))
            fh.seek(8 * dims, 1)
            kind = int(r.take("I"))
            r.take("Q")  # offset
            types[TYPE_NAMES.get(kind, f"type {kind}")] += 1
    sizes = ("block_count", "embedding_length", "attention.head_count", "attention.head_count_kv")
    shape = {k: meta[f"{arch}.{k}"] for k in sizes if f"{arch}.{k}" in meta}
    return GGUFInfo(path=path, version=version, architecture=arch, tensor_types=types, shape=shape)


def openvino_problem(path: Path) -> str | None:
    """Why OpenVINO GenAI cannot serve this GGUF file, or None when it can."""
    try:
        info = read_gguf_info(path)
    except ModelStoreError as exc:
        return exc.message
    if info.architecture not in OPENVINO_ARCHS:
        return (
            f"its architecture is {info.architecture or 'not named'}; OpenVINO's GGUF reader "
            f"builds {', '.join(sorted(OPENVINO_ARCHS))}"
        )
    refused = {t: n for t, n in info.tensor_types.items() if t not in OPENVINO_TYPES}
    if refused:
        held = ", ".join(f"{n} {t}" for t, n in sorted(refused.items()))
        return (
            f"it holds tensors of types OpenVINO's GGUF reader does not convert ({held} of "
            f"{info.tensors} tensors); it takes {', '.join(sorted(OPENVINO_TYPES))}"
        )
    return None


def backends_for(path: Path) -> dict[str, str | None]:
    """Each CPU backend and why it cannot serve the file (None: it can)."""
    try:
        read_gguf_info(path)
    except ModelStoreError as exc:
        return {"llama.cpp": exc.message, "openvino": exc.message}
    return {"llama.cpp": None, "openvino": openvino_problem(path)}
