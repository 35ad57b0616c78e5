"""The artifacts watcher on real files: what changed, merged into few batches, no UI."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pantheon.core.observe.watch import ArtifactChanges, ArtifactsWatcher, classify
from pantheon.core.store.atomic import append_line, atomic_write_json
from pantheon.core.store.control import ControlFile


class Recorder:
    def __init__(self) -> None:
        self.batches: list[ArtifactChanges] = []
        self.event = threading.Event()

    def __call__(self, changes: ArtifactChanges) -> None:
        self.batches.append(changes)
        self.event.set()

    def merged(self) -> ArtifactChanges:
        out = ArtifactChanges()
        for b in self.batches:
            out = out.merged(b)
        return out

    def settled(self, folder: Path, name: str = "probe") -> None:
        """Write probe files in ``folder`` until one is reported: the watches are up (watchfiles
        gives no ready signal), and every batch before it is in. Then forget all batches."""
        for i in range(200):
            (folder / f"{name}-{i}").write_text("")
            try:
                self.wait_for(lambda c, i=i: f"{name}-{i}" in c.other, timeout=0.25)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError(f"the watcher never reported a file in {folder}")
        self.batches.clear()

    def wait_for(self, predicate, timeout: float = 10.0) -> ArtifactChanges:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.merged()):
                return self.merged()
            self.event.wait(0.05)
            self.event.clear()
        raise AssertionError(f"not seen in {timeout} s; batches: {self.batches}")


def start(artifacts: Path, **kw) -> tuple[ArtifactsWatcher, Recorder]:
    rec = Recorder()
    watcher = ArtifactsWatcher(artifacts, rec, debounce_ms=150, step_ms=30, wait_s=0.1, **kw)
    watcher.start()
    if artifacts.is_dir():
        rec.settled(artifacts)
    return watcher, rec


def test_classify_sorts_paths_into_parts(tmp_path):
    a = tmp_path
    changes = classify(
        a,
        [
            str(a / "pantheon.db-wal"),
            str(a / "control.json"),
            str(a / ".tmp-control.json.12.ab"),
            str(a / "metrics" / "engine.jsonl"),
            str(a / "runs" / "docops-000001" / "run.json"),
            str(a / "runs" / "docops-000002"),
            str(a / "summary.json"),
            "/elsewhere/file",
        ],
    )
    assert changes.queue and changes.control and changes.metrics
    assert changes.runs == {"docops-000001", "docops-000002"}
    assert changes.other == {"summary.json"}
    assert not classify(a, [str(a / "runs" / "x" / ".tmp-run.json.1.2")])


def test_the_watcher_reports_each_part_of_the_night(tmp_path):
    artifacts = tmp_path / "artifacts"
    (artifacts / "runs").mkdir(parents=True)
    (artifacts / "metrics").mkdir()
    watcher, rec = start(artifacts)
    try:
        ControlFile(artifacts).update(by="test", concurrency=3)
        rec.wait_for(lambda c: c.control)
        append_line(artifacts / "metrics" / "engine.jsonl", '{"ts": 1}')
        rec.wait_for(lambda c: c.metrics)
        (artifacts / "runs" / "docops-000007").mkdir()
        rec.wait_for(lambda c: "docops-000007" in c.runs)
        (artifacts / "pantheon.db").write_bytes(b"")
        rec.wait_for(lambda c: c.queue)
    finally:
        watcher.stop()
    assert watcher.error is None


def test_a_burst_of_writes_arrives_as_a_few_batches(tmp_path):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    watcher, rec = start(artifacts)
    try:
        for i in range(200):
            atomic_write_json(artifacts / "control.json", {"concurrency": 1 + i % 5})
        rec.wait_for(lambda c: c.control)
        (artifacts / "after-the-burst").write_text("")
        rec.wait_for(lambda c: "after-the-burst" in c.other)
    finally:
        watcher.stop()
    assert 2 <= len(rec.batches) <= 20, len(rec.batches)


def test_a_directory_that_appears_later_is_watched_then(tmp_path):
    artifacts = tmp_path / "not-yet"
    watcher, rec = start(artifacts)
    try:
        time.sleep(0.3)  # nothing to report while there is nothing: no event to wait on
        assert rec.batches == []
        (artifacts / "runs").mkdir(parents=True)
        rec.wait_for(lambda c: c.rescan)  # watching from now on, and read it all once
        rec.settled(artifacts)
        ControlFile(artifacts).update(by="test", concurrency=2)
        rec.wait_for(lambda c: c.control)
    finally:
        watcher.stop()


def test_a_followed_run_reports_its_node_files(tmp_path):
    artifacts = tmp_path / "artifacts"
    run = artifacts / "runs" / "docops-000003"
    (run / "plan").mkdir(parents=True)
    watcher, rec = start(artifacts, run="docops-000003")
    try:
        atomic_write_json(run / "plan" / "output.json", {"ok": True})
        rec.wait_for(lambda c: "docops-000003" in c.runs)
        rec.batches.clear()
        (run / "write").mkdir()  # a node that starts later is watched too
        rec.wait_for(lambda c: c.rescan)  # the watch started over with it
        for i in range(200):  # until the new node's own watch reports a file
            rec.batches.clear()
            (run / "write" / f"probe-{i}").write_text("")
            try:
                rec.wait_for(lambda c: "docops-000003" in c.runs, timeout=0.25)
                break
            except AssertionError:
                continue
        rec.batches.clear()
        atomic_write_json(run / "write" / "output.json", {"ok": True})
        rec.wait_for(lambda c: "docops-000003" in c.runs)
        watcher.follow_run(None)
        rec.wait_for(lambda c: c.rescan)
        rec.settled(artifacts)
        atomic_write_json(run / "write" / "output.json", {"ok": False})
        (artifacts / "after-the-write").write_text("")
        rec.wait_for(lambda c: "after-the-write" in c.other)  # every batch before it is in
        assert "docops-000003" not in rec.merged().runs
    finally:
        watcher.stop()


def test_a_failing_callback_does_not_end_the_watch(tmp_path):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    calls = []

    def callback(changes: ArtifactChanges) -> None:
        calls.append(changes)
        raise RuntimeError("the UI fell over")

    watcher = ArtifactsWatcher(artifacts, callback, debounce_ms=100, step_ms=20, wait_s=0.1)
    watcher.start()
    try:
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:  # until the watches are up
            ControlFile(artifacts).update(by="test", concurrency=2)
            time.sleep(0.1)
        seen = len(calls)
        ControlFile(artifacts).update(by="test", concurrency=3)
        while len(calls) == seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.stop()
    assert seen >= 1 and len(calls) > seen


def test_on_a_network_file_system_the_files_are_polled(tmp_path):
    """Another host's writes to an NFS folder raise no inotify event here: the watcher polls
    such a folder, and a polling watcher still sees each part of the night."""
    from pantheon.core.observe.watch import network_fs

    mounts = (
        "sysfs /sys sysfs rw 0 0\n"
        "/dev/sda1 / ext4 rw 0 0\n"
        "fileserver:/export/night /mnt/night nfs4 rw,relatime 0 0\n"
    )
    assert network_fs(Path("/mnt/night/artifacts"), mounts) == "nfs4"
    assert network_fs(Path("/mnt/nightly/artifacts"), mounts) is None
    assert network_fs(Path("/home/op/artifacts"), mounts) is None
    artifacts = tmp_path / "artifacts"
    (artifacts / "runs").mkdir(parents=True)
    watcher, rec = start(artifacts, poll=True)
    try:
        ControlFile(artifacts).update(by="test", concurrency=3)
        rec.wait_for(lambda c: c.control)
        (artifacts / "runs" / "codefix-000003").mkdir()
        rec.wait_for(lambda c: "codefix-000003" in c.runs)
    finally:
        watcher.stop()
    assert watcher.poll is True and watcher.error is None
