"""Tools an agent may use, confined to its job's workspace.

Every path is resolved inside the workspace: an absolute path, a ``..`` that climbs out, or a
symlink that points outside is refused with a clear error, and so is anything under ``.git``.
No tool reaches the network. Tests run in a subprocess with a time limit and an output cap, in
the sandbox for model-written code (:mod:`pantheon.core.work.sandbox`) unless the operator chose
unconfined runs.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pantheon.core.errors import PantheonError
from pantheon.core.store.atomic import atomic_write_text
from pantheon.core.work.sandbox import SandboxError, code_sandbox

__all__ = ["TOOLS", "Tool", "ToolError", "Workspace"]

OUTPUT_CAP = 8000


class ToolError(PantheonError):
    """A tool call that cannot be carried out (outside the workspace, no such file, ...)."""

    title = "Tool error"


class Workspace:
    """The one folder a job's tools may touch."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ToolError(f"the workspace {self.root} does not exist")

    def resolve(self, rel: str, *, for_write: bool = False) -> Path:
        """The real path of ``rel`` inside the workspace; ToolError for anything outside."""
        if not isinstance(rel, str) or not rel.strip():
            raise ToolError("a path is required")
        candidate = Path(rel)
        if candidate.is_absolute():
            raise ToolError(f"path {rel!r} is absolute; tools take paths inside the workspace")
        if ".." in candidate.parts:
            raise ToolError(f"path {rel!r} climbs out of the workspace with '..'")
        real = (self.root / candidate).resolve()
        if real != self.root and not real.is_relative_to(self.root):
            raise ToolError(f"path {rel!r} leads outside the workspace (through a symlink)")
        inside = real.relative_to(self.root).parts
        if inside and inside[0] == ".git":
            raise ToolError(f"path {rel!r} is inside .git, which tools never touch")
        if for_write and real.is_dir():
            raise ToolError(f"path {rel!r} is a folder")
        return real

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


class ListArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = "."
    pattern: str = Field(default="*", description="a glob on file names, e.g. *.py")


class ReadArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str


class WriteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    content: str


class EditArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    old: str = Field(min_length=1, description="text that occurs exactly once in the file")
    new: str


class TestArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(default="", description="a test file or node id; empty for all tests")


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


def list_files(ws: Workspace, args: ListArgs) -> dict[str, Any]:
    base = ws.resolve(args.path)
    if not base.is_dir():
        raise ToolError(f"{args.path!r} is not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__"))
        for name in sorted(filenames):
            if fnmatch.fnmatch(name, args.pattern):
                found.append(ws.rel(Path(dirpath) / name))
            if len(found) >= 500:
                return {"files": found, "truncated": True}
    return {"files": found, "truncated": False}


def read_file(ws: Workspace, args: ReadArgs) -> dict[str, Any]:
    path = ws.resolve(args.path)
    if not path.is_file():
        raise ToolError(f"no file {args.path!r} in the workspace")
    text = path.read_text(encoding="utf-8", errors="replace")
    return {"path": args.path, "content": text[:20000], "truncated": len(text) > 20000}


def write_file(ws: Workspace, args: WriteArgs) -> dict[str, Any]:
    path = ws.resolve(args.path, for_write=True)
    atomic_write_text(path, args.content)
    return {"path": args.path, "bytes": len(args.content.encode("utf-8"))}


def edit_file(ws: Workspace, args: EditArgs) -> dict[str, Any]:
    path = ws.resolve(args.path, for_write=True)
    if not path.is_file():
        raise ToolError(f"no file {args.path!r} in the workspace")
    text = path.read_text(encoding="utf-8")
    count = text.count(args.old)
    if count != 1:
        raise ToolError(
            f"the text to replace occurs {count} times in {args.path!r}; it must occur once"
        )
    atomic_write_text(path, text.replace(args.old, args.new, 1))
    return {"path": args.path, "replaced": 1}


def run_tests(ws: Workspace, args: TestArgs, *, timeout_s: float = 60.0) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    if args.target:
        ws.resolve(args.target.split("::", 1)[0])
        cmd.append(args.target)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    try:
        sandbox = code_sandbox()
    except SandboxError as exc:
        raise ToolError(exc.message) from None
    try:
        if sandbox is not None:
            done = sandbox.run(cmd, cwd=ws.root, env=env, timeout=timeout_s)
        else:
            done = subprocess.run(
                cmd,
                cwd=ws.root,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=env,
                stdin=subprocess.DEVNULL,
            )
    except subprocess.TimeoutExpired:
        raise ToolError(
            f"the tests did not finish within {timeout_s:.0f} s (a test hangs?)"
        ) from None
    output = (done.stdout + done.stderr)[-OUTPUT_CAP:]
    return {"passed": done.returncode == 0, "exit_code": done.returncode, "output": output}


def show_diff(ws: Workspace, args: NoArgs) -> dict[str, Any]:
    done = subprocess.run(
        ["git", "diff", "--no-color", "HEAD"],
        cwd=ws.root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise ToolError(f"git diff failed: {done.stderr.strip()[:300]}")
    return {"diff": done.stdout[-OUTPUT_CAP:], "truncated": len(done.stdout) > OUTPUT_CAP}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    Args: type[BaseModel]
    fn: Callable[..., dict[str, Any]]

    def __call__(self, ws: Workspace, args: BaseModel, **kw: Any) -> dict[str, Any]:
        return self.fn(ws, args, **kw)


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("list_files", "List the files under a folder of the workspace.", ListArgs, list_files),
        Tool("read_file", "Read a text file of the workspace.", ReadArgs, read_file),
        Tool("write_file", "Write a whole text file (created or replaced).", WriteArgs, write_file),
        Tool("edit_file", "Replace text that occurs exactly once in a file.", EditArgs, edit_file),
        Tool("run_tests", "Run the workspace's tests with pytest.", TestArgs, run_tests),
        Tool("show_diff", "Show the changes made so far (git diff).", NoArgs, show_diff),
    )
}
