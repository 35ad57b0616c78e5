"""The engine's fail-safes: merges pause when the reviewers stop agreeing (κ) or let the
planted canaries through, and the night pauses on a full disk and goes on when there is room.
Only the operator resumes merges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pantheon.core.errors import EXIT_DISK_FULL, PantheonError
from pantheon.core.observe.quality import blind_gates, calibration_figures
from pantheon.core.ratelog import RepeatLog
from pantheon.core.store.control import ControlFile
from pantheon.core.store.diskspace import DiskGuard

if TYPE_CHECKING:
    from pantheon.core.run.outcomes import EngineStats

__all__ = ["Safeguards"]

log = logging.getLogger("pantheon.core.run.engine")


class Safeguards:
    """The engine's fail-safes, an object it holds: the reviewers' audits (κ, canaries) that
    pause merges, and the full disk that pauses the night."""

    def __init__(
        self,
        artifacts: Path,
        control: ControlFile,
        disk: DiskGuard,
        stats: EngineStats,
        repeats: RepeatLog,
        *,
        kappa_threshold: float,
        kappa_min_pairs: int,
        canary_min: int,
        canary_max_miss: float,
        request_stop: Callable[[], None],
        hold_between_nodes: Callable[[bool], None],
    ) -> None:
        self.artifacts = artifacts
        self.control = control
        self.disk = disk
        self.stats = stats
        self.repeats = repeats
        self.kappa_threshold = kappa_threshold
        self.kappa_min_pairs = kappa_min_pairs
        self.canary_min = canary_min
        self.canary_max_miss = canary_max_miss
        self.request_stop = request_stop
        """Stops the engine gracefully (a night that gave up on its disk)."""
        self.hold_between_nodes = hold_between_nodes
        """Tells the running jobs whether to stop after their node in flight (a full disk)."""
        self.blind_said = False
        """Whether the night said once that its canaries do not pause merges (a blind gate)."""

    def check_agreement(self, sample: dict[str, Any], paused: bool) -> None:
        """Pause merges when the reviewers stop agreeing; only the operator resumes them."""
        kappa, pairs = sample.get("kappa"), sample.get("kappa_pairs", 0)
        if paused or kappa is None or pairs < self.kappa_min_pairs:
            return
        if kappa < self.kappa_threshold:
            reason = f"κ {kappa:.2f} over the last {pairs} pairs"
            self.pause_merges(sample, reason, f"under {self.kappa_threshold:.2f}")

    def pause_merges(self, sample: dict[str, Any], reason: str, past: str) -> None:
        """Pause merges with the reason; changes wait for the morning review."""
        self.control.update(by="engine", merges_paused=True, merges_paused_reason=reason)
        sample["merges_paused"] = True
        log.warning(
            "merges paused: %s, %s; changes wait for the morning review "
            "(`pantheon control --resume-merges` resumes them)",
            reason,
            past,
        )

    def canary_recorded(self) -> None:
        """A canary was judged: check the reviewers' scores now, so that a change whose
        reviewers let the planted defect through waits rather than merges."""
        from pantheon.core.observe.canaries import canary_scores, read_canaries

        try:
            control = self.control.read()
            sample = {"canaries": canary_scores(read_canaries(self.artifacts))}
            self.check_canaries(sample, control.merges_paused)
        except PantheonError as exc:
            self.repeats.warning("canaries", "canary scores not checked: %s", exc)

    def check_canaries(self, sample: dict[str, Any], paused: bool) -> None:
        """Pause merges when the reviewers let planted defects through; only the operator
        resumes them."""
        canaries = sample.get("canaries") or {}
        n, missed = canaries.get("n", 0), canaries.get("missed", 0)
        if paused or n < max(self.canary_min, 1) or missed / n <= self.canary_max_miss:
            return
        blind = blind_gates(calibration_figures(self.artifacts), canaries.get("by_change") or {})
        if blind:
            # a gate measured as carrying no information misses canaries by chance: pausing on
            # that would stop every night without telling the operator anything new
            if self.blind_said:
                return
            self.blind_said = True
            log.warning(
                "the reviewers passed %d of %d canaries, and their calibration says they carry "
                "no measured information (%s): a blind gate misses canaries by chance, so merges "
                "are not paused on them (`pantheon reviewers` shows the calibration)",
                missed,
                n,
                blind,
            )
            return
        reason = f"the reviewers passed {missed} of {n} canaries (planted defects)"
        self.pause_merges(sample, reason, f"more than {self.canary_max_miss:.0%}")

    def disk_check(self) -> bool:
        """Whether the night is paused on a full disk (the free space looked at now and then).
        While it is, the running jobs stop after their node in flight."""
        paused = self.disk.check()
        if self.disk.pauses > self.stats.disk_pauses:
            self.stats.disk_pauses = self.disk.pauses
        self.hold_between_nodes(paused)
        return paused

    def disk_trouble(self, problem: BaseException | str | None) -> bool:
        """Pause on a full disk when ``problem`` says the disk is full; True when it does."""
        if not self.disk.trouble(problem):
            return False
        self.disk_check()
        return True

    def give_up_on_the_disk(self) -> None:
        """An ``until_empty`` night that waited long enough for room stops, with its own code."""
        pause = self.disk.paused
        assert pause is not None
        reason = (
            f"the disk of {self.artifacts} stayed full for {self.disk.paused_for():.0f} s "
            f"({pause.why}); the night stops with exit code {EXIT_DISK_FULL}: free some space "
            "and run it again, the jobs left resume where they were"
        )
        log.error("%s", reason)
        self.stats.exit_code = EXIT_DISK_FULL
        self.stats.exit_reason = reason
        self.request_stop()
