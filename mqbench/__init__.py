"""mqbench: a benchmark and reproducibility suite for quantizing mobile CNNs.

The public API for plugin authors: the ``hookimpl`` marker and the types a plugin registers.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "mqbench"
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
