"""File utilities: mqbench's cache directory, sha256 of a file, atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """``$MQBENCH_CACHE``, default ``~/.cache/mqbench``: trained weights, downloads, decoded datasets."""
    return Path(os.environ.get("MQBENCH_CACHE") or "~/.cache/mqbench").expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def umask() -> int:
    """The process's file-creation mask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` so readers see the old file (or none) or the whole new one, never part.

    With ``overwrite=False`` the final step is a hard link, which raises FileExistsError rather than
    replace an existing file. The temp file (``.<name>.*.partial``) is removed in every case. The file gets
    the mode a plain ``open()`` would give it (0666 less the umask), not ``mkstemp``'s private 0600, so a web
    server running as another user can serve a published page.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        os.fchmod(fd, 0o666 & ~umask())
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
