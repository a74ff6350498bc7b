"""Atomic file writes: a hidden temp file in the same directory, fsynced, then moved into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` so readers see the old file (or none) or the whole new one, never part.

    With ``overwrite=False`` the final step is a hard link, which raises FileExistsError rather than
    replace an existing file. The temp file (``.<name>.*.partial``) is removed in every case.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
