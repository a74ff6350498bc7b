"""Calibration helpers shared by range-estimation methods: run observers, set ranges.

A method supplies an observer factory, called with each :class:`Quantizer` (so it can read the
quantizer's ``axis`` and integer ``grid``): which statistics to collect and how to turn them into a
range. These functions do the plumbing: weights are observed directly, activations by running the
float model (every quantizer off) over the calibration images with observers at each point.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mqbench.data import Split
from mqbench.progress import SILENT, Reporter
from mqbench.quant.estimators import MinMaxObserver, Observer
from mqbench.quant.qsim import Quantizer, QuantSim

ObserverFactory = Callable[[Quantizer], Observer]
# The calibration batch of batch-invariant observers (the float model's activations are the same at any batch of
# at least this size: tests/unit/test_eval_batch.py).
INVARIANT_BATCH = 32


def calibrate_weights(qsim: QuantSim, make_observer: ObserverFactory) -> None:
    """Set every weight quantizer's range from ``make_observer(quantizer)`` fed with its weight tensor."""
    for name, quantizer in qsim.weight_quantizers.items():
        observer = make_observer(quantizer)
        observer.observe(qsim.layer_weight(name))
        quantizer.set_range(*observer.compute_range())


def calibrate_activations(qsim: QuantSim, calib: Split, make_observer: ObserverFactory,
                          batch_size: int = 256, reporter: Reporter = SILENT) -> None:
    """Observe every activation point on ``calib`` with the float model, then set its range.

    The observers see batches of ``batch_size`` images, or of :data:`INVARIANT_BATCH` when every one of them is
    ``batch_invariant`` (the same statistics however the images are batched, computed faster in small batches).
    Afterwards every quantizer is in ``quantize`` mode and no observer is left attached.
    """
    for q in qsim.act_quantizers.values():
        q.observer = make_observer(q)
    if all(q.observer is not None and q.observer.batch_invariant for q in qsim.act_quantizers.values()):
        batch_size = min(batch_size, INVARIANT_BATCH)
    qsim.set_mode("off")
    qsim.set_mode("observe", "activations")
    try:
        with torch.inference_mode():
            for inputs, _ in reporter.track(calib.batches(batch_size), "calibrating",
                                            total=-(-len(calib) // batch_size)):
                qsim(inputs)
        for q in qsim.act_quantizers.values():
            assert q.observer is not None
            q.set_range(*q.observer.compute_range())
    finally:
        for q in qsim.act_quantizers.values():
            q.observer = None
        qsim.set_mode("quantize")


def minmax_observer(quantizer: Quantizer) -> Observer:
    """The naive observer: running min/max, per channel when the quantizer is."""
    return MinMaxObserver(quantizer.axis)
