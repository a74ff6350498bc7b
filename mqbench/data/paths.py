"""Where real data lives: ``$MQBENCH_DATA``, else ``../shared/data`` beside the working directory or
beside the mqbench checkout (the layout of ``../shared/data/README.md``)."""

from __future__ import annotations

import os
from pathlib import Path

from mqbench.errors import UsageError

DATA_ENV = "MQBENCH_DATA"


def data_dir(required_for: str | None = None) -> Path | None:
    """The data directory, or None when none is configured or found. With ``required_for`` a missing
    directory is a UsageError saying how to provide it."""
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise UsageError(f"{DATA_ENV}={env} is not a directory; point it at the data folder (e.g. ../shared/data)")
        return path
    for candidate in (Path.cwd() / ".." / "shared" / "data",
                      Path(__file__).resolve().parents[2] / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    if required_for:
        raise UsageError(f"{required_for} needs the data directory: set {DATA_ENV} or pass --data-dir "
                         "(the folder holding imagenet/ and cifar10/, see ../shared/data/README.md)")
    return None


def data_file(relative: str, required_for: str) -> Path:
    """``relative`` inside the data directory (an absolute path is taken as is); missing: a UsageError
    naming the expected file."""
    path = Path(relative)
    if not path.is_absolute():
        root = data_dir(required_for)
        assert root is not None
        path = root / relative
    if not path.exists():
        raise UsageError(f"{required_for} expects {path}, which does not exist (data directory: "
                         f"{path.parent}; set {DATA_ENV} or --data-dir)")
    return path
