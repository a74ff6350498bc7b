"""Provenance recorded in every record: versions, git commit, machine and ISA, threads."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from mqbench import __version__, allocator

ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "sve")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def git_info() -> dict[str, Any]:
    """Commit and dirty flag of the checkout mqbench runs from (None outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


@functools.cache
def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key in ("flags", "Features"):
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "machine": platform.machine(), "isa": sorted(f for f in ISA_FLAGS if f in flags),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def collect(packages: Sequence[str] = ("onnxruntime",)) -> dict[str, Any]:
    """What every record carries about where it ran; ``packages``: the distributions the registered runtimes and
    toolkits declare (their versions go under ``packages``; ``onnxruntime`` is also kept at the top level, where
    the first wave's records have it)."""
    return {
        "mqbench": __version__,
        "git": git_info(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "onnxruntime": _version("onnxruntime"),
        "packages": {name: _version(name) for name in sorted(set(packages))},
        "pluggy": _version("pluggy"),
        "cpu": cpu_info(),
        "threads": torch.get_num_threads(),
        "allocator": allocator.state(),
    }
