"""``pantheon stop``: stop the night that drains an artifacts directory, found by its lock."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pantheon.console.commands.common import artifacts_arg
from pantheon.core.run.nightlock import night_holder, stop_night


def add_stop(sub: Any) -> None:
    p = sub.add_parser(
        "stop",
        help="stop the night running on ARTIFACTS: its jobs in flight finish, then it ends",
        description="Stop the night (or headless engine) that drains ARTIFACTS, wherever it was "
        "started from: the nodes in flight finish, unfinished jobs go back to the queue, the "
        "model servers it started stop, and it exits with code 130. A second `pantheon stop` "
        "(or --now) cancels the nodes in flight; they resume from their last finished node "
        "next time.",
    )
    p.add_argument(
        "--now", action="store_true", help="cancel the nodes in flight instead of waiting for them"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for the night to end (default: 600; 0: do not wait)",
    )
    artifacts_arg(p)


def cmd_stop(args: argparse.Namespace) -> int:
    holder = stop_night(args.artifacts, hard=args.now)
    if holder is None:
        print(f"no night is running on {args.artifacts}", file=sys.stderr)
        return 1
    how = "cancelling its nodes in flight" if args.now else "its nodes in flight finish first"
    print(f"stopping the {holder.line()}: {how}", file=sys.stderr)
    if args.wait <= 0:
        return 0
    deadline = time.monotonic() + args.wait
    while night_holder(args.artifacts) is not None:
        if time.monotonic() > deadline:
            print(
                f"the night is still running after {args.wait:.0f} s: `pantheon stop --now` "
                "cancels its nodes in flight",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.5)
    print("the night has stopped; its unfinished jobs resume next time", file=sys.stderr)
    return 0
