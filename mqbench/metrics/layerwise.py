"""Layer-wise error accumulation and distributional dynamics of a QuantSim against its float model.

For every weighted layer (conv, depthwise, pointwise, linear) of a calibrated :class:`QuantSim`, on the same
images, with the float model (the QuantSim in :meth:`QuantSim.float_mode`: BN folded, every quantizer off,
original float weights) as the reference:

* **local error**: only this layer quantized, float input: its weights (the deployed weights, so AdaRound's
  rounding counts), its bias as the runtime adds it, and its output quantizer (after the fused activation);
* **accumulated error**: every quantizer up to and including this layer's on (the QuantSim as it runs);

each as SQNR in dB, MSE, mean per-image cosine similarity and per-channel mean shift (the bias that
Finkelstein et al. 2019 correct). Both are measured at the layer's *output point*: where the runtime writes
the layer's integer tensor (its activation quantizer, after a fused ReLU/ReLU6), or the layer's output (after
its fused activation) when the scheme leaves activations in float.

Also per layer: the weight range of each output channel (max |w|) against the layer's (the ratio of the
largest to the median channel range: what per-tensor quantization must cover against what a typical channel
needs; Yun & Wong 2021's channel-wise vs layer-wise mismatch, large on depthwise layers), the float
activation range per channel and per layer, and the Wasserstein-1 distance between the float and the
(accumulated) quantized activation distributions, in units of the float activation's standard deviation.

SQNR is capped at :data:`SQNR_CAP_DB` (beyond float32's precision) and flagged ``capped``: an unquantized layer
has no error and its SQNR is reported as ">= the cap", never NaN or infinite.

The float and the quantized pass run batch by batch through a torch.fx interpreter that keeps only the
output points of the current batch; the local errors come from the float pass itself (each layer recomputed
quantized on its float input), so the analysis costs about three forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from mqbench.progress import SILENT, Reporter
from mqbench.quant.qsim import QuantConv2d, Quantizer, QuantLinear, QuantSim, is_activation

SQNR_CAP_DB = 150.0  # float32 resolves about 144 dB; above this an error is no error
LAYERWISE_VERSION = 1
W1_SAMPLES_PER_BATCH = 8192  # activation values drawn per layer and batch for the Wasserstein distance


def sqnr_db(signal_power: float, noise_power: float, cap: float = SQNR_CAP_DB) -> tuple[float, bool]:
    """``10 log10(signal / noise)`` clipped to ``[-cap, cap]``, and whether it was clipped (a zero noise
    power is ``(cap, True)``; a zero signal with noise ``(-cap, True)``)."""
    if noise_power <= 0.0:
        return cap, True
    if signal_power <= 0.0:
        return -cap, True
    value = 10.0 * math.log10(signal_power / noise_power)
    if value > cap or value < -cap:
        return max(-cap, min(cap, value)), True
    return value, False


def wasserstein1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Wasserstein-1 distance between the empirical distributions of two equally long 1-d samples."""
    if a.numel() != b.numel():
        raise ValueError(f"samples of different sizes: {a.numel()} and {b.numel()}")
    if a.numel() == 0:
        return 0.0
    return float((torch.sort(a.double()).values - torch.sort(b.double()).values).abs().mean())


def channel_range_ratio(ranges: torch.Tensor) -> float:
    """Largest over median channel range (1.0 when every channel spans the same range; inf-free: a median of
    zero gives the largest range over the smallest positive one, or 1.0 when all are zero)."""
    r = ranges.double().flatten()
    largest = float(r.max())
    median = float(r.median())
    if median > 0:
        return largest / median
    positive = r[r > 0]
    return largest / float(positive.min()) if positive.numel() else 1.0


def fit_slope(values: list[float]) -> float | None:
    """Least-squares slope of ``values`` against their index (None for fewer than two values)."""
    n = len(values)
    if n < 2:
        return None
    xs = torch.arange(n, dtype=torch.float64)
    ys = torch.tensor(values, dtype=torch.float64)
    xc = xs - xs.mean()
    return float((xc * (ys - ys.mean())).sum() / (xc * xc).sum())


def _channel_dims(t: torch.Tensor) -> list[int]:
    return [d for d in range(t.dim()) if d != 1]


@dataclass
class _ErrorStats:
    """Running sums of the error of ``q`` against the float ``f`` at one point (channels on axis 1). Products
    are reduced per image in float32 (pairwise summation) and accumulated in float64."""

    signal: float = 0.0
    noise: float = 0.0
    elements: int = 0
    cosine_sum: float = 0.0
    samples: int = 0
    shift_sum: torch.Tensor | None = None  # per channel: sum of (q - f), float64
    per_channel_count: int = 0

    def add(self, f: torch.Tensor, q: torch.Tensor, ff: torch.Tensor) -> None:
        """``ff``: the per-image sum of ``f * f`` (shared by the local and the accumulated statistics)."""
        n = f.shape[0]
        flat_f, flat_q = f.reshape(n, -1), q.reshape(n, -1)
        err = flat_q - flat_f
        ee = torch.einsum("ij,ij->i", err, err).double()
        qq = torch.einsum("ij,ij->i", flat_q, flat_q).double()
        fq = torch.einsum("ij,ij->i", flat_f, flat_q).double()
        self.signal += float(ff.sum())
        self.noise += float(ee.sum())
        self.elements += f.numel()
        norms = (ff * qq).sqrt()
        # Two zero vectors are identical (cosine 1); a zero against a non-zero one is orthogonal (0).
        cos = torch.where(norms > 0, fq / norms.clamp_min(1e-300), (ff == qq).double())
        self.cosine_sum += float(cos.sum())
        self.samples += n
        shift = err.reshape(q.shape).sum(dim=_channel_dims(q)).double() if q.dim() > 1 else err.reshape(-1).double()
        self.shift_sum = shift if self.shift_sum is None else self.shift_sum + shift
        self.per_channel_count += f.numel() // f.shape[1] if f.dim() > 1 else f.numel()

    def summary(self, float_rms: float) -> dict[str, Any]:
        value, capped = sqnr_db(self.signal, self.noise)
        assert self.shift_sum is not None
        shift = self.shift_sum / max(self.per_channel_count, 1)
        return {
            "sqnr_db": round(value, 4), "sqnr_capped": capped,
            "mse": self.noise / max(self.elements, 1),
            "cosine": self.cosine_sum / max(self.samples, 1),
            "mean_shift_abs_max": float(shift.abs().max()),
            # rms over channels of the per-channel mean shift, in units of the float output's rms
            "mean_shift_rel": float(shift.pow(2).mean().sqrt()) / float_rms if float_rms > 0 else 0.0,
            "mean_shift": [float(v) for v in shift],
        }


@dataclass
class _ActivationStats:
    """Per-channel min/max of the float activation and samples for the Wasserstein distance."""

    cmin: torch.Tensor | None = None
    cmax: torch.Tensor | None = None
    sum2: float = 0.0
    count: int = 0
    float_samples: list[torch.Tensor] = field(default_factory=list)
    quant_samples: list[torch.Tensor] = field(default_factory=list)

    def add_float(self, f: torch.Tensor, ff: torch.Tensor) -> None:
        lo, hi = (f.amin(dim=_channel_dims(f)), f.amax(dim=_channel_dims(f))) if f.dim() > 1 else (f, f)
        self.cmin = lo if self.cmin is None else torch.minimum(self.cmin, lo)
        self.cmax = hi if self.cmax is None else torch.maximum(self.cmax, hi)
        self.sum2 += float(ff.sum())
        self.count += f.numel()

    @property
    def rms(self) -> float:
        return math.sqrt(self.sum2 / self.count) if self.count else 0.0


@dataclass(frozen=True)
class _LayerPoint:
    layer: str
    kind: str
    index: int
    point: str  # the fx node whose output is the layer's output point
    activation: str | None  # the fused activation node between the layer and the point, if any
    quantizer: Quantizer | None  # the output quantizer (None when activations stay float)


def layer_points(qsim: QuantSim) -> list[_LayerPoint]:
    """Each weighted layer of ``qsim`` with the node where its output is written (see the module docstring)."""
    gm = qsim.model
    modules = dict(gm.named_modules())
    kinds = {info.name: info.kind for info in qsim.layers}
    out: list[_LayerPoint] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), (QuantConv2d, QuantLinear)):
            continue
        point, activation, quantizer = node, None, None
        users = list(point.users)
        if len(users) == 1 and is_activation(users[0], modules):
            point = activation = users[0]
            users = list(point.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(modules.get(str(users[0].target)), Quantizer):
            point = users[0]
            quantizer = modules[str(point.target)]
            assert isinstance(quantizer, Quantizer)
        name = str(node.target)
        out.append(_LayerPoint(name, kinds[name], len(out), point.name, activation.name if activation else None,
                               quantizer))
    return out


class _Recorder(fx.Interpreter):
    """Runs the graph, keeping the outputs of ``points``; in ``local`` mode also computes, for each layer,
    its output with only that layer quantized from the float input it receives."""

    def __init__(self, gm: fx.GraphModule, points: list[_LayerPoint], local: QuantSim | None,
                 deployed: dict[str, torch.Tensor], modes: dict[int, str] | None = None) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.by_point = {p.point: p for p in points}
        self.by_layer = {p.layer: p for p in points}
        self.local = local
        self.deployed = deployed
        self.modes = modes or {}  # each quantizer's mode in the QuantSim as analysed (id -> mode)
        self.values: dict[str, torch.Tensor] = {}
        self.local_values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.by_point:
            self.values[self.by_point[n.name].layer] = result.detach()
        if self.local is not None and n.op == "call_module" and str(n.target) in self.by_layer:
            x = self.env[n.args[0]] if isinstance(n.args[0], fx.Node) else n.args[0]
            assert isinstance(x, torch.Tensor)
            self.local_values[str(n.target)] = self._quantized_alone(self.by_layer[str(n.target)], n, x)
        return result

    def _quantized_alone(self, p: _LayerPoint, node: fx.Node, x: torch.Tensor) -> torch.Tensor:
        """Layer ``p`` on the float input ``x`` with its weight, bias and output quantizers as the QuantSim has
        them (a quantizer switched off there stays off)."""
        layer = self.module.get_submodule(p.layer)
        assert isinstance(layer, (QuantConv2d, QuantLinear))
        input_q = layer.input_quantizer() if layer.input_quantizer is not None else None
        switched = [q for q in (layer.weight_quantizer, input_q, p.quantizer) if q is not None]
        saved_modes = [q.mode for q in switched]
        float_weight = layer.weight.detach().clone() if p.layer in self.deployed else None
        try:
            for q in switched:  # the input quantizer only sets the int32 bias scale: x is not re-quantized
                q.mode = self.modes.get(id(q), "off")  # type: ignore[assignment]
            if float_weight is not None:
                layer.weight.data.copy_(self.deployed[p.layer])
            y = layer.forward(x)
            if p.activation is not None:
                act = next(u for u in node.users if u.name == p.activation)
                y = self._apply_activation(act, y)
            if p.quantizer is not None:
                y = p.quantizer(y)
            return y.detach()
        finally:
            for q, mode in zip(switched, saved_modes, strict=True):
                q.mode = mode
            if float_weight is not None:
                layer.weight.data.copy_(float_weight)

    def _apply_activation(self, act: fx.Node, y: torch.Tensor) -> torch.Tensor:
        rest = tuple(self.env[a] if isinstance(a, fx.Node) else a for a in act.args[1:])
        if act.op == "call_module":
            return self.module.get_submodule(str(act.target))(y, *rest, **act.kwargs)
        if act.op == "call_method":
            return getattr(y, str(act.target))(*rest, **act.kwargs)
        assert callable(act.target)
        return act.target(y, *rest, **act.kwargs)


def _batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], batch_size):
        yield images[start:start + batch_size]


def analyze(qsim: QuantSim, images: torch.Tensor, batch_size: int = 32, seed: int = 0,
            reporter: Reporter = SILENT) -> dict[str, Any]:
    """The layer-wise analysis of ``qsim`` on ``images`` (normalised model inputs, N x C x H x W).

    Returns ``{"version", "images", "layers": [per-layer dict, in execution order], "summary"}``; every
    value is JSON-serialisable and finite (see :func:`summarize` for the summary).
    """
    if images.shape[0] == 0:
        raise ValueError("layer-wise analysis needs at least one image")
    points = layer_points(qsim)
    gm = qsim.model
    deployed = {name: qsim.layer_weight(name).detach().clone() for name in qsim.float_weights}
    local = {p.layer: _ErrorStats() for p in points}
    accumulated = {p.layer: _ErrorStats() for p in points}
    acts = {p.layer: _ActivationStats() for p in points}
    modes: dict[int, str] = {id(q): q.mode for q in qsim.quantizers()}
    gen = torch.Generator().manual_seed(seed)
    total = -(-images.shape[0] // batch_size)
    was_training = qsim.training
    qsim.eval()
    try:
        with torch.inference_mode():
            for batch in reporter.track(_batches(images, batch_size), "layer-wise analysis", total=total):
                with qsim.float_mode():
                    floats = _Recorder(gm, points, qsim, deployed, modes)
                    floats.run(batch)
                quant = _Recorder(gm, points, None, {})
                quant.run(batch)
                for p in points:
                    f, q = floats.values[p.layer], quant.values[p.layer]
                    flat = f.reshape(f.shape[0], -1)
                    ff = torch.einsum("ij,ij->i", flat, flat).double()
                    acts[p.layer].add_float(f, ff)
                    local[p.layer].add(f, floats.local_values[p.layer], ff)
                    accumulated[p.layer].add(f, q, ff)
                    idx = torch.randint(0, f.numel(), (min(W1_SAMPLES_PER_BATCH, f.numel()),), generator=gen)
                    acts[p.layer].float_samples.append(f.reshape(-1)[idx].clone())
                    acts[p.layer].quant_samples.append(q.reshape(-1)[idx].clone())
                del floats, quant
    finally:
        qsim.train(was_training)
    layers = []
    with qsim.float_mode():
        for p in points:
            a = acts[p.layer]
            assert a.cmin is not None and a.cmax is not None
            weight = qsim.layer_weight(p.layer).detach()
            w_ranges = weight.reshape(weight.shape[0], -1).abs().amax(dim=1)
            a_ranges = a.cmax - a.cmin
            fs, qs = torch.cat(a.float_samples), torch.cat(a.quant_samples)
            fstd = float(fs.double().std()) if fs.numel() > 1 else 0.0
            layers.append({
                "index": p.index, "layer": p.layer, "kind": p.kind,
                "output_quantized": p.quantizer is not None,
                "local": local[p.layer].summary(a.rms),
                "accumulated": accumulated[p.layer].summary(a.rms),
                "weight_range": {"layer": float(w_ranges.max()), "channel_median": float(w_ranges.median()),
                                 "ratio_max_median": channel_range_ratio(w_ranges),
                                 "per_channel": [float(v) for v in w_ranges]},
                "activation_range": {"min": float(a.cmin.min()), "max": float(a.cmax.max()),
                                     "ratio_max_median": channel_range_ratio(a_ranges),
                                     "per_channel_min": [float(v) for v in a.cmin],
                                     "per_channel_max": [float(v) for v in a.cmax]},
                "wasserstein1_rel": wasserstein1(fs, qs) / fstd if fstd > 0 else 0.0,
            })
    return {"version": LAYERWISE_VERSION, "images": int(images.shape[0]), "sqnr_cap_db": SQNR_CAP_DB,
            "layers": layers, "summary": summarize(layers)}


def summarize(layers: list[dict[str, Any]], top: int = 3) -> dict[str, Any]:
    """The record's summary of a layer-wise analysis: the final accumulated SQNR, its least-squares slope in
    dB per layer (over uncapped values), the ``top`` layers with the lowest local SQNR and with the largest
    drops of accumulated SQNR, and the median channel-to-layer weight range ratio per layer kind."""
    acc = [entry["accumulated"]["sqnr_db"] for entry in layers]
    uncapped = [v for v, entry in zip(acc, layers, strict=True) if not entry["accumulated"]["sqnr_capped"]]
    drops = sorted(((acc[i - 1] - acc[i], i) for i in range(1, len(acc))), reverse=True)[:top]
    worst_local = sorted(range(len(layers)), key=lambda i: layers[i]["local"]["sqnr_db"])[:top]
    by_kind: dict[str, list[float]] = {}
    for entry in layers:
        by_kind.setdefault(entry["kind"], []).append(entry["weight_range"]["ratio_max_median"])
    last = layers[-1]["accumulated"] if layers else None
    return {
        "layers": len(layers),
        "final_sqnr_db": last["sqnr_db"] if last else None,
        "final_sqnr_capped": last["sqnr_capped"] if last else None,
        "slope_db_per_layer": fit_slope(uncapped),
        "worst_local": [{"layer": layers[i]["layer"], "kind": layers[i]["kind"],
                         "sqnr_db": layers[i]["local"]["sqnr_db"]} for i in worst_local],
        "largest_drops": [{"layer": layers[i]["layer"], "kind": layers[i]["kind"], "drop_db": round(d, 4),
                           "sqnr_db": acc[i]} for d, i in drops if d > 0],
        "weight_range_ratio_median_by_kind": {
            kind: float(torch.tensor(v, dtype=torch.float64).median()) for kind, v in sorted(by_kind.items())},
    }


__all__ = ["LAYERWISE_VERSION", "SQNR_CAP_DB", "analyze", "channel_range_ratio", "fit_slope", "layer_points",
           "sqnr_db", "summarize", "wasserstein1"]
