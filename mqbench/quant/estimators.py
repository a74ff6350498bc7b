"""Range estimators: observers collect statistics; a separate call turns them into a range.

An observer sees tensors (``observe``) and reports the ``(min, max)`` range it would quantize
(``compute_range``); turning a range into qparams is the pure ``functional.qparams_from_range``.
Per-channel observers reduce over every axis except ``axis``.
"""

from __future__ import annotations

import torch


class Observer:
    """Base class: collect statistics of the tensors seen, then propose a range."""

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis
        self.count = 0

    def observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def compute_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _reduce(self, x: torch.Tensor, fn: str) -> torch.Tensor:
        """``x.amin()``/``x.amax()`` over everything (per-tensor) or over all axes but ``axis``."""
        x = x.detach().float()
        if self.axis is None:
            return getattr(x, fn)()
        flat = x.transpose(0, self.axis % x.dim()).reshape(x.shape[self.axis], -1)
        return getattr(flat, fn)(dim=1)


class MinMaxObserver(Observer):
    """The running minimum and maximum over everything observed (naive PTQ)."""

    def __init__(self, axis: int | None = None) -> None:
        super().__init__(axis)
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        if torch.isnan(x).any():
            raise ValueError("observed a tensor containing NaN; the float model produces NaN on this input")
        lo, hi = self._reduce(x, "amin"), self._reduce(x, "amax")
        self.min_val = lo if self.min_val is None else torch.minimum(self.min_val, lo)
        self.max_val = hi if self.max_val is None else torch.maximum(self.max_val, hi)
        self.count += 1

    def compute_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val is None or self.max_val is None:
            raise RuntimeError("MinMaxObserver.compute_range called before any tensor was observed")
        return self.min_val, self.max_val
