"""Atomic file writes, the one way every module writes a file a reader may open meanwhile: a reader sees the old file
or the new one, never half of one. The core and search/ both use it (checkpoints, the decode cache, the leaderboard,
settings, reports)."""
from __future__ import annotations

import contextlib
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


@contextmanager
def atomic_path(path: Union[str, os.PathLike], durable: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write (hidden: a `.` prefix); on success it replaces `path` (os.replace,
    same folder, so the rename is atomic), on any failure it is removed and `path` is left as it was. The new file has
    the mode of any new file under the umask (0666 less it). `durable`: fsync the file before the rename and the
    folder after, so the new file also survives a power cut (the leaderboard, which no later write repeats).

        with atomic_path(out) as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        with contextlib.suppress(OSError):  # a folder that cannot be opened (some network file systems): best effort
            _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["atomic_path"]
