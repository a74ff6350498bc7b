"""Range estimators: observers collect statistics; a separate call turns them into a range.

An observer sees tensors (``observe``) and reports the ``(min, max)`` range it would quantize
(``compute_range``); turning a range into qparams is the pure ``functional.qparams_from_range``.
Per-channel observers reduce over every axis except ``axis``.

The clipping estimators (``percentile``, ``mse``, ``entropy``) are pure functions of a *weighted
sample*: ``values`` and ``counts`` of shape ``(C, N)``, one row per channel (one row per tensor).
Weights are their own exact sample (counts of one); activations, seen batch after batch, are
summarised by a streaming histogram (:class:`HistogramObserver`) whose bin centres and counts are the
sample. The estimators that trade clipping against rounding error (``mse``, ``entropy``) need the
integer grid the range is for (:class:`Grid`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from mqbench.quant import functional as Q

Range = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Grid:
    """The integer grid a range is chosen for: bits, symmetry, signedness, power-of-two scales."""

    bits: int
    symmetric: bool
    signed: bool
    power_of_two: bool = False

    @property
    def levels(self) -> int:
        return 1 << self.bits


def quantization_error(values: torch.Tensor, counts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                       grid: Grid) -> torch.Tensor:
    """Per-row weighted squared error of fake-quantizing ``values`` with the qparams of ``[lo, hi]``."""
    scale, zp = Q.qparams_from_range(lo, hi, bits=grid.bits, symmetric=grid.symmetric, signed=grid.signed,
                                     power_of_two=grid.power_of_two)
    qmin, qmax = Q.quant_range(grid.bits, grid.signed)
    s, z = scale.view(-1, 1), zp.view(-1, 1).float()
    fq = (torch.clamp(torch.round(values * (1.0 / s)) + z, qmin, qmax) - z) * s
    return ((fq - values) ** 2 * counts).sum(1)


def minmax_range(values: torch.Tensor, counts: torch.Tensor) -> Range:
    """The smallest and largest sample with a non-zero count, per row."""
    present = counts > 0
    inf = torch.tensor(float("inf"))
    return (torch.where(present, values, inf).amin(1), torch.where(present, values, -inf).amax(1))


def percentile_range(values: torch.Tensor, counts: torch.Tensor, percentile: float) -> Range:
    """``[q(100 - p), q(p)]`` of the weighted sample, per row (``p`` in (50, 100]).

    A range that does not reach 0 is widened to it when qparams are computed, so for non-negative
    data (after ReLU) only the upper percentile matters.
    """
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    order = values.argsort(1)
    v, c = values.gather(1, order), counts.gather(1, order).double()
    cdf = c.cumsum(1) / c.sum(1, keepdim=True).clamp_min(1e-300)
    frac = percentile / 100.0
    hi_idx = torch.searchsorted(cdf, torch.full((v.shape[0], 1), frac, dtype=torch.float64)).clamp_max(v.shape[1] - 1)
    lo_idx = torch.searchsorted(cdf, torch.full((v.shape[0], 1), 1.0 - frac, dtype=torch.float64)).clamp_max(v.shape[1] - 1)
    return v.gather(1, lo_idx).squeeze(1), v.gather(1, hi_idx).squeeze(1)


def mse_range(values: torch.Tensor, counts: torch.Tensor, grid: Grid, candidates: int = 100) -> Range:
    """The range ``alpha * [min, max]``, ``alpha`` in ``{1/K, ..., 1}``, with the least squared
    quantization error of the sample on ``grid`` (per row; ties go to the widest range)."""
    lo, hi = minmax_range(values, counts)
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    best_err = torch.full_like(lo, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    for k in range(candidates, 0, -1):
        alpha = k / candidates
        err = quantization_error(values, counts, lo * alpha, hi * alpha, grid)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, lo * alpha, best_lo), torch.where(better, hi * alpha, best_hi)
    return best_lo, best_hi


def msqe_scale(values: torch.Tensor, counts: torch.Tensor, grid: Grid, candidates: int = 100,
               refinements: int = 20) -> torch.Tensor:
    """The scale of a symmetric ``grid`` with the least squared quantization error of the sample, per row.

    The error as a function of the scale has many local minima (every grid level crossing a value
    makes a kink), so no iterative solver: with power-of-two scales every exponent from the one that
    covers ``max |x|`` down to ``2**-15`` of it is tried (the global minimum, exactly); otherwise the
    scales ``k / K * max|x| / qmax`` (``k = 1..K``) are tried, then ``refinements`` points between
    the best one's neighbours. Ties go to the larger scale (less clipping).
    """
    if not grid.symmetric:
        raise ValueError("msqe_scale needs a symmetric grid")
    _, qmax = Q.quant_range(grid.bits, grid.signed)
    amax = torch.where(counts > 0, values.abs(), torch.zeros_like(values)).amax(1).clamp_min(Q.EPS)
    top = amax / qmax

    def error(scale: torch.Tensor) -> torch.Tensor:
        return quantization_error(values, counts, -scale * qmax, scale * qmax, grid)

    def search(cands: list[torch.Tensor]) -> torch.Tensor:
        best_err = torch.full_like(amax, float("inf"))
        best = cands[0]
        for scale in cands:  # largest first, so ties keep the larger scale
            err = error(scale)
            better = err < best_err
            best_err, best = torch.where(better, err, best_err), torch.where(better, scale, best)
        return best

    if grid.power_of_two:
        exponent = torch.ceil(torch.log2(top))
        return search([torch.exp2(exponent - k) for k in range(16)])
    coarse = search([top * k / candidates for k in range(candidates, 0, -1)])
    step = top / candidates
    return search([(coarse + step * (1 - 2 * j / refinements)).clamp_min(Q.EPS) for j in range(refinements + 1)]
                  + [coarse])


def outlier_mask(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """1.0 where ``|x| <= sigma * std(row)``, else 0.0 (all ones when ``sigma <= 0``), per row of ``values``.

    Bae et al. 2022's outlier mask for the MSQE objective: the scale is fitted to the bulk of a channel,
    the few weights beyond ``sigma`` standard deviations are clipped without voting on the scale.
    """
    if sigma <= 0:
        return torch.ones_like(values)
    std = values.std(1, keepdim=True) if values.shape[1] > 1 else values.abs()
    return (values.abs() <= sigma * std).to(values.dtype)


def msqe_range(values: torch.Tensor, counts: torch.Tensor, grid: Grid, candidates: int = 100,
               refinements: int = 20) -> Range:
    """The symmetric range whose qparams on ``grid`` are :func:`msqe_scale`'s scale."""
    _, qmax = Q.quant_range(grid.bits, grid.signed)
    scale = msqe_scale(values, counts, grid, candidates, refinements)
    return -scale * qmax, scale * qmax


def _abs_histogram(values: torch.Tensor, counts: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row histogram of ``|values|`` over ``[0, max |value|]``: counts (C, bins) and bin width (C,)."""
    mag = values.abs()
    top = torch.where(counts > 0, mag, torch.zeros_like(mag)).amax(1).clamp_min(Q.EPS)
    width = top / bins
    idx = (mag / width.view(-1, 1)).floor().long().clamp_(0, bins - 1)
    hist = torch.zeros(values.shape[0], bins, dtype=torch.float64)
    hist.scatter_add_(1, idx, counts.double())
    return hist, width


def entropy_range(values: torch.Tensor, counts: torch.Tensor, grid: Grid, bins: int = 2048,
                  candidates: int = 128) -> Range:
    """The clipping threshold ``t`` minimising KL(P || Q) between the histogram of ``|x|`` clipped at
    ``t`` (outliers folded into the last bin) and its quantized version on the grid's levels
    (TensorRT's entropy calibration, Migacz 2017), per row; the range is ``[max(min, -t), min(max, t)]``."""
    lo, hi = minmax_range(values, counts)
    hist, width = _abs_histogram(values, counts, bins)
    # Levels on one side of zero: a signed grid spends half its codes on negative values.
    levels = grid.levels // 2 if (grid.signed or bool((lo < 0).any())) else grid.levels
    levels = min(levels, bins)
    rows = hist.shape[0]
    best_kl = torch.full((rows,), float("inf"), dtype=torch.float64)
    best_i = torch.full((rows,), bins, dtype=torch.long)
    starts = sorted({round(levels + (bins - levels) * j / max(candidates - 1, 1)) for j in range(candidates)})
    for i in starts:
        p = hist[:, :i].clone()
        p[:, -1] += hist[:, i:].sum(1)
        level_of = (torch.arange(i) * levels // i).expand(rows, i)
        nonzero = (hist[:, :i] > 0).double()
        mass = torch.zeros(rows, levels, dtype=torch.float64).scatter_add_(1, level_of, hist[:, :i])
        support = torch.zeros(rows, levels, dtype=torch.float64).scatter_add_(1, level_of, nonzero)
        q = (mass / support.clamp_min(1)).gather(1, level_of) * nonzero
        p_n = p / p.sum(1, keepdim=True).clamp_min(1e-300)
        q_n = q / q.sum(1, keepdim=True).clamp_min(1e-300)
        eps = 1e-12
        kl = torch.where(p_n > 0, p_n * torch.log(p_n / (q_n + eps) + eps), torch.zeros_like(p_n)).sum(1)
        better = kl < best_kl
        best_kl = torch.where(better, kl, best_kl)
        best_i = torch.where(better, torch.full_like(best_i, i), best_i)
    t = (best_i.float() * width).to(lo.dtype)
    return torch.maximum(lo, -t), torch.minimum(hi, t)


def channel_rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as ``(C, N)``: one row per channel along ``axis`` (one row when per-tensor)."""
    x = x.detach().float()
    if axis is None:
        return x.reshape(1, -1)
    return x.transpose(0, axis % x.dim()).reshape(x.shape[axis], -1)


class Observer:
    """Base class: collect statistics of the tensors seen, then propose a range. ``batch_invariant``: the statistics
    do not depend on how the data is cut into batches (the calibration then feeds it small batches, faster)."""

    batch_invariant: ClassVar[bool] = False

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis
        self.count = 0

    def observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def compute_range(self) -> Range:
        raise NotImplementedError

    def _reduce(self, x: torch.Tensor, fn: str) -> torch.Tensor:
        """``x.amin()``/``x.amax()`` over everything (per-tensor) or over all axes but ``axis``."""
        x = x.detach().float()
        if self.axis is None:
            return getattr(x, fn)()
        return getattr(self._rows(x), fn)(dim=1)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return channel_rows(x, self.axis)

    @staticmethod
    def _check(x: torch.Tensor) -> None:
        if torch.isnan(x).any():
            raise ValueError("observed a tensor containing NaN; the float model produces NaN on this input")


class MinMaxObserver(Observer):
    """The running minimum and maximum over everything observed (naive PTQ)."""

    batch_invariant = True

    def __init__(self, axis: int | None = None) -> None:
        super().__init__(axis)
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        lo, hi = torch.aminmax(x) if self.axis is None else torch.aminmax(self._rows(x), dim=1)
        self._check(lo)  # a NaN anywhere in x is a NaN minimum (aminmax propagates it): one pass, not two
        self.min_val = lo if self.min_val is None else torch.minimum(self.min_val, lo)
        self.max_val = hi if self.max_val is None else torch.maximum(self.max_val, hi)
        self.count += 1

    def compute_range(self) -> Range:
        if self.min_val is None or self.max_val is None:
            raise RuntimeError("MinMaxObserver.compute_range called before any tensor was observed")
        return self.min_val, self.max_val


Estimate = Callable[[torch.Tensor, torch.Tensor], Range]


class SampleObserver(Observer):
    """Keeps every value observed (for weights, seen once) and hands the exact sample to ``estimate``."""

    batch_invariant = True  # the values are concatenated in the order seen, whatever the batches

    def __init__(self, estimate: Estimate, axis: int | None = None) -> None:
        super().__init__(axis)
        self.estimate = estimate
        self.rows: list[torch.Tensor] = []

    def observe(self, x: torch.Tensor) -> None:
        self._check(x)
        self.rows.append(self._rows(x))
        self.count += 1

    def compute_range(self) -> Range:
        if not self.rows:
            raise RuntimeError("SampleObserver.compute_range called before any tensor was observed")
        values = torch.cat(self.rows, 1)
        lo, hi = self.estimate(values, torch.ones_like(values))
        return (lo, hi) if self.axis is not None else (lo[0], hi[0])


class HistogramObserver(Observer):
    """A streaming histogram of everything observed (per tensor), ``bins`` equal bins over the running
    ``[min, max]``; when a batch widens the range, the counts so far are re-binned onto the wider grid
    (each old bin moved to the new bin holding its centre). ``estimate`` receives bin centres and counts.
    """

    def __init__(self, estimate: Estimate, bins: int = 2048) -> None:
        super().__init__(None)
        self.estimate, self.bins = estimate, bins
        self.hist = torch.zeros(bins, dtype=torch.float64)
        self.lo = self.hi = 0.0

    def _centres(self) -> torch.Tensor:
        width = (self.hi - self.lo) / self.bins
        return self.lo + width * (torch.arange(self.bins, dtype=torch.float64) + 0.5)

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        low, high = torch.aminmax(x)
        self._check(low)  # a NaN anywhere in x is a NaN minimum (aminmax propagates it): one pass, not three
        lo, hi = float(low), float(high)
        if self.count == 0:
            self.lo, self.hi = lo, hi
        elif lo < self.lo or hi > self.hi:
            centres = self._centres()
            new_lo, new_hi = min(lo, self.lo), max(hi, self.hi)
            idx = ((centres - new_lo) / max(new_hi - new_lo, 1e-30) * self.bins).floor().long().clamp_(0, self.bins - 1)
            self.hist = torch.zeros_like(self.hist).index_add_(0, idx, self.hist)
            self.lo, self.hi = new_lo, new_hi
        if self.hi > self.lo:
            self.hist += torch.histc(x, self.bins, self.lo, self.hi).double()
        else:
            self.hist[0] += x.numel()
        self.count += 1

    def compute_range(self) -> Range:
        if self.count == 0:
            raise RuntimeError("HistogramObserver.compute_range called before any tensor was observed")
        if self.hi <= self.lo:
            return torch.tensor(self.lo), torch.tensor(self.hi)
        centres = self._centres().float().view(1, -1)
        lo, hi = self.estimate(centres, self.hist.float().view(1, -1))
        # Bin centres sit half a bin inside the observed extremes; never clip beyond what minmax would.
        return lo[0].clamp(self.lo, self.hi), hi[0].clamp(self.lo, self.hi)


__all__ = ["Grid", "HistogramObserver", "MinMaxObserver", "Observer", "Range", "SampleObserver", "channel_rows",
           "entropy_range",
           "minmax_range", "mse_range", "msqe_range", "msqe_scale", "outlier_mask", "percentile_range",
           "quantization_error"]
