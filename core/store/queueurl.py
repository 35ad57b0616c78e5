"""Which queue an artifacts directory uses: its own SQLite file (``pantheon.db``, the default,
nothing to start), or a PostgreSQL database several engine hosts share, named in
``ARTIFACTS/queue.json`` by ``--queue postgresql://...``. Every reader of the artifacts (the
engine, the console, ``pantheon status``, the report) opens the queue it names."""

from __future__ import annotations

from pathlib import Path

from pantheon.core.errors import ArtifactError, ConfigError
from pantheon.core.store.atomic import atomic_write_json, read_json
from pantheon.core.store.layout import DB_FILE, QUEUE_FILE

__all__ = ["check_queue_url", "has_queue", "queue_url", "set_queue_url"]

SCHEMES = ("postgresql://", "postgres://")


def check_queue_url(url: str) -> str:
    """``sqlite`` (the artifacts' own file) or a PostgreSQL URL; ConfigError otherwise."""
    if url == "sqlite" or url.startswith(SCHEMES):
        return url
    raise ConfigError(
        f"--queue {url!r} is neither 'sqlite' nor a PostgreSQL URL",
        hint="give postgresql://USER@HOST:PORT/DATABASE (the password from ~/.pgpass or "
        "PGPASSWORD), or leave --queue out for the artifacts' own SQLite file",
    )


def has_queue(artifacts: Path) -> bool:
    """Whether the artifacts directory has a queue: its SQLite file, or a PostgreSQL one."""
    return (Path(artifacts) / DB_FILE).exists() or (Path(artifacts) / QUEUE_FILE).exists()


def queue_url(artifacts: Path) -> str | None:
    """The PostgreSQL URL the artifacts directory's queue is at; None: its SQLite file."""
    path = Path(artifacts) / QUEUE_FILE
    if not path.exists():
        return None
    try:
        url = read_json(path).get("url")
    except (ArtifactError, AttributeError, OSError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}", hint="remove it or fix it") from None
    return url if isinstance(url, str) and url.startswith(SCHEMES) else None


def set_queue_url(artifacts: Path, url: str | None) -> None:
    """Name the queue of the artifacts directory (None or ``sqlite``: its own file)."""
    path = Path(artifacts) / QUEUE_FILE
    if url is None or url == "sqlite":
        path.unlink(missing_ok=True)
        return
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"url": check_queue_url(url)})
