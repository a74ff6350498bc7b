"""The C allocator set up for tensor work, once per process (``mqbench`` commands and Ray workers).

glibc's malloc serves every allocation above 32 MiB with a fresh ``mmap`` and gives it back with ``munmap`` when
it is freed, and it returns the free top of its heap to the system (trims) past 128 KiB. An evaluation allocates
and frees activations of tens to hundreds of MiB per layer and batch, so each of them is faulted in page by page
again, and the kernel zeroes every page: on the 2-core machine mqbench is measured on, most of a MobileNetV2
evaluation's time was system time (with this and the rest of issue 25's changes, the fake-quant evaluation of the
``ort-qdq`` cell went from 116 s to 22 s: ``results/bench/cells-2026-12-03-a6bfbc7-db8334d.json``, written by
``scripts/bench_cells.py``). :func:`tune` turns both off
(``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, -1)``): freed memory stays in the process and is reused,
so a process keeps the peak of what it used (a few GiB for an ImageNet cell) until it exits. This is the fix
PyTorch's CPU performance guide gives (a caching allocator such as jemalloc or tcmalloc), made with glibc's own
switches so nothing has to be preloaded. It changes no computed value.

``MQBENCH_MALLOC=system`` leaves the allocator as it is. Every record says which it was
(``provenance.allocator``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Any

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
ENV = "MQBENCH_MALLOC"

_state: dict[str, Any] | None = None


def tune() -> dict[str, Any]:
    """Set glibc malloc up for tensor work (module docstring), once per process; what was done, for the records."""
    global _state
    if _state is None:
        _state = _tune()
    return dict(_state)


def state() -> dict[str, Any]:
    """What :func:`tune` did in this process (``{"tuned": False, ...}`` before it ran)."""
    return dict(_state) if _state is not None else {"tuned": False, "why": "not tuned in this process"}


def _tune() -> dict[str, Any]:
    if os.environ.get(ENV, "").strip().lower() == "system":
        return {"tuned": False, "why": f"{ENV}=system"}
    libc_name, libc_version = platform.libc_ver()
    if libc_name != "glibc":
        return {"tuned": False, "why": f"the C library is {libc_name or 'not glibc'}: nothing to set"}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1
    except (OSError, AttributeError) as exc:
        return {"tuned": False, "why": f"mallopt unavailable ({exc})"}
    if not ok:
        return {"tuned": False, "why": "mallopt refused the settings"}
    return {"tuned": True, "library": f"glibc {libc_version}", "mmap": "off", "trim": "off"}


__all__ = ["ENV", "state", "tune"]
