"""A peft LoRA adapter as a GGUF LoRA file, the format llama.cpp's ``llama-server --lora`` loads.

Written with the ``gguf`` package: the base model's architecture, ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, and per adapted weight two tensors named after the
base tensor (``blk.3.attn_q.weight.lora_a`` of shape rank × in, ``.lora_b`` of out × rank).
llama.cpp scales each by alpha / rank, as peft does.

The base weights came from the GGUF file, which stores the query and key projections of
llama-architecture models permuted for its rotary embedding (transformers un-permutes them on
load); the adapter's ``lora_b`` for those projections gets the same permutation back, so the
adapter lands on the rows it was trained for.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from pantheon.core.errors import PantheonError

__all__ = ["GGUFConversionError", "base_architecture", "peft_to_gguf"]

_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<base>.+)\.lora_(?P<ab>[AB])\.weight$")
# architectures whose GGUF stores q/k permuted (llama.cpp's LlamaModel conversion)
_PERMUTED = {"llama"}


class GGUFConversionError(PantheonError):
    title = "Adapter conversion"


def base_architecture(model_path: Path) -> tuple[str, int, int, int]:
    """(architecture, blocks, heads, kv heads) of a GGUF model file."""
    import gguf

    reader = gguf.GGUFReader(str(model_path))
    arch = str(reader.fields["general.architecture"].contents())

    def field(key: str) -> int:
        value = reader.fields[f"{arch}.{key}"].contents()
        return int(value if not isinstance(value, list) else value[0])

    heads = field("attention.head_count")
    try:
        kv = field("attention.head_count_kv")
    except KeyError:
        kv = heads
    return arch, field("block_count"), heads, kv


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (``LlamaModel.permute``), on the output rows."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def peft_to_gguf(adapter_dir: Path, base_model: Path, out: Path) -> int:
    """Convert the peft adapter in ``adapter_dir`` for the base GGUF model; returns the tensors
    written."""
    import gguf
    from safetensors.numpy import load_file

    logging.getLogger("gguf").setLevel(logging.WARNING)  # its writer narrates every file

    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    except (OSError, ValueError) as exc:
        raise GGUFConversionError(f"cannot read the peft adapter in {adapter_dir}: {exc}") from exc
    arch, blocks, heads, kv_heads = base_architecture(base_model)
    try:
        model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    except StopIteration:
        raise GGUFConversionError(f"llama.cpp does not know the architecture {arch!r}") from None
    names = gguf.get_tensor_name_map(model_arch, blocks)

    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = _LORA.match(key)
        if m is None:
            raise GGUFConversionError(f"{adapter_dir}: unexpected tensor {key!r} in a LoRA adapter")
        pairs.setdefault(m["base"], {})[m["ab"]] = value.astype(np.float32)

    out = Path(out)
    tmp = out.with_name(f".tmp-{out.name}")  # written beside the target, then renamed
    writer = gguf.GGUFWriter(None, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    written = 0
    for base, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise GGUFConversionError(f"{adapter_dir}: {base} has only lora_{''.join(ab)}")
        name = names.get_name(base + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise GGUFConversionError(f"no GGUF tensor of {arch!r} matches {base!r}")
        lora_a, lora_b = ab["A"], ab["B"]
        if arch in _PERMUTED and base.endswith("q_proj"):
            lora_b = _permute(lora_b, heads)
        elif arch in _PERMUTED and base.endswith("k_proj"):
            lora_b = _permute(lora_b, kv_heads)
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(lora_a))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(lora_b))
        written += 2
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=tmp)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return written
