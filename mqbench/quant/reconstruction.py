"""Layer-wise output reconstruction data, shared by methods that fit one layer at a time (AdaRound's
rounding, LSQ's and TQT's learned scales).

Such a method minimises, for each weighted layer in network order, ``|| f(W x) - f(Q(W) x~) ||^2``:
``x`` is the layer's input in the float network, ``x~`` its input in the quantized network with every
earlier layer already fitted (the asymmetric reconstruction of Nagel et al. 2020, Section 5), ``f`` the
activation fused into the layer. :func:`layer_data` yields that data layer by layer.

A convolution's output at one position depends only on the input patch under it, so the data are
*rows*: for ``positions`` sampled output positions per image, the input patch (``x~``) and the float
network's activation-applied output (the target). The layer's output on rows is a grouped matrix
product (:func:`layer_rows`), whatever the image resolution. The float network runs once over the
images (keeping every layer's targets); the quantized network runs node by node, each layer's input computed from
the previous layer on once that layer is fitted (:class:`_QuantizedPrefix`), so a layer's data reflect the fitted
layers before it and the network still runs only once over the images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from mqbench.data import Split
from mqbench.layers import tf_same_pad
from mqbench.progress import SILENT, Reporter
from mqbench.quant.qsim import Quantizer, QuantSim

Activation = Callable[[torch.Tensor], torch.Tensor]


def grouped_weight(layer: nn.Module) -> torch.Tensor:
    """A conv/linear weight as ``(groups, out_per_group, in_per_group * kh * kw)``."""
    w = layer.weight
    assert isinstance(w, torch.Tensor)
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    return w.reshape(groups, w.shape[0] // groups, -1)


def channel_view(p: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A per-tensor (0-d) or per-output-channel (1-d) qparam shaped to broadcast against ``(G, O, I)``."""
    return p.reshape(*shape, 1) if p.dim() == 1 else p


def layer_rows(x_rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A layer's outputs on patch rows: ``x_rows (R, G, I)``, ``weight (G, O, I)`` -> ``(R, G * O)``."""
    out = torch.einsum("rgi,goi->rgo", x_rows, weight).reshape(x_rows.shape[0], -1)
    return out if bias is None else out + bias


def patch_rows(layer: nn.Module, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The input patches under output ``positions (N, P)`` (flat indices) of ``layer``: ``(N * P, G, I)``."""
    if isinstance(layer, nn.Linear):
        return x.reshape(x.shape[0], 1, -1)
    assert isinstance(layer, nn.Conv2d)
    if layer.padding_mode != "zeros":
        raise ValueError(f"layer-wise reconstruction supports zero-padded convolutions, not "
                         f"padding_mode={layer.padding_mode!r}")
    if getattr(layer, "tf_same", False):
        x = tf_same_pad(x, layer.kernel_size, layer.stride, layer.dilation)  # type: ignore[arg-type]
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # type: ignore[arg-type]
    picked = torch.gather(cols, 2, positions.unsqueeze(1).expand(-1, cols.shape[1], -1))  # (N, C*k*k, P)
    return picked.permute(0, 2, 1).reshape(-1, layer.groups, cols.shape[1] // layer.groups)


@dataclass
class LayerData:
    """One layer's reconstruction problem (see the module docstring)."""

    name: str
    weight: torch.Tensor  # float weight (G, O, I)
    bias: torch.Tensor | None
    quantizer: Quantizer
    x_rows: torch.Tensor  # quantized network's input patches (R, G, I)
    targets: torch.Tensor  # float network's activation-applied outputs (R, G * O)
    activation: Activation | None

    def loss(self, weight: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over rows of the squared output error (summed over channels) with ``weight (G, O, I)``."""
        x, t = (self.x_rows, self.targets) if rows is None else (self.x_rows[rows], self.targets[rows])
        out = layer_rows(x, weight, self.bias)
        if self.activation is not None:
            out = self.activation(out)
        return (out - t).pow(2).sum(1).mean()


def layer_data(qsim: QuantSim, calib: Split, *, images: int, positions: int, seed: int = 0, batch_size: int = 32,
               reporter: Reporter = SILENT, description: str = "layers") -> Iterator[LayerData]:
    """Yield each weighted layer's :class:`LayerData` in network order. The caller fits the layer (and
    updates the QuantSim) before asking for the next one: the next layer's inputs come from the
    quantized network as it is then. The caller changes only the layer it was given (its weight, bias or
    weight quantizer): the quantized network's values before that layer are kept, not recomputed."""
    generator = torch.Generator().manual_seed(seed)
    chosen = calib.images[:images]
    names = [info.name for info in qsim.layers]
    layers = {name: qsim.model.get_submodule(name) for name in names}
    activations = {name: qsim.fused_activation(name) for name in names}
    sampled: dict[str, torch.Tensor] = {}
    targets = _float_targets(qsim, calib, chosen, layers, activations, sampled, positions, generator, batch_size)
    prefix = _QuantizedPrefix(qsim, [calib.normalize(chosen[i:i + batch_size]) for i in range(0, len(chosen), batch_size)])
    for name in reporter.track(names, description, total=len(names)):
        layer = layers[name]
        x_rows = _quantized_inputs(prefix, name, layer, sampled[name])
        bias = layer.bias
        yield LayerData(name, grouped_weight(layer).detach().clone(),
                        bias.detach().clone() if isinstance(bias, torch.Tensor) else None,
                        qsim.weight_quantizers[name], x_rows, targets.pop(name), activations[name])


def fit_layers(qsim: QuantSim, calib: Split, fit: Callable[[LayerData], dict[str, float]], *, images: int,
               positions: int, before: str, after: str, seed: int = 0, batch_size: int = 32,
               reporter: Reporter = SILENT, description: str = "layers") -> dict[str, object]:
    """Run ``fit`` (which updates the QuantSim) on each layer's data in network order; returns the record's
    notes: each layer's statistics from ``fit`` and the mean ratio of its ``after`` to its ``before`` loss."""
    stats = {data.name: fit(data) for data in layer_data(qsim, calib, images=images, positions=positions, seed=seed,
                                                         batch_size=batch_size, reporter=reporter,
                                                         description=description)}
    ratios = [s[after] / max(s[before], 1e-12) for s in stats.values()]
    return {"layers": {name: {k: round(v, 6) for k, v in s.items()} for name, s in stats.items()},
            "mean_loss_ratio": round(sum(ratios) / max(1, len(ratios)), 4)}


def _float_targets(qsim: QuantSim, calib: Split, images: torch.Tensor, layers: dict[str, nn.Module],
                   activations: dict[str, Activation | None], sampled: dict[str, torch.Tensor], positions: int,
                   generator: torch.Generator, batch: int) -> dict[str, torch.Tensor]:
    """One float pass: every layer's activation-applied output at its sampled positions."""
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    offset = [0]

    def hook(out: torch.Tensor, name: str) -> None:
        flat = out.reshape(out.shape[0], out.shape[1], -1)  # (N, C, L); linear: L = 1
        if name not in sampled:
            count = min(positions, flat.shape[2])
            sampled[name] = torch.stack([torch.randperm(flat.shape[2], generator=generator)[:count]
                                         for _ in range(len(images))])
        pos = sampled[name][offset[0]:offset[0] + out.shape[0]]
        picked = torch.gather(flat, 2, pos.unsqueeze(1).expand(-1, flat.shape[1], -1)).permute(0, 2, 1)
        picked = picked.reshape(-1, flat.shape[1])
        act = activations[name]
        rows[name].append(act(picked) if act is not None else picked)

    handles = [layer.register_forward_hook(lambda m, i, o, name=name: hook(o, name)) for name, layer in layers.items()]
    try:
        with torch.no_grad(), qsim.float_mode():
            for start in range(0, len(images), batch):
                offset[0] = start
                qsim(calib.normalize(images[start:start + batch]))
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(r) for name, r in rows.items()}


class _QuantizedPrefix:
    """The quantized network's FX graph run node by node on fixed batches, each batch's live node values kept.

    Asked for a layer's input, it computes only the nodes from the layer asked for last up to this one: the caller
    changes only the layer it was given (its weight or weight quantizer) in between, so every node before that one
    still holds its value. The network then runs once over the images in all, instead of once per layer up to it;
    the same modules and functions on the same batches, so the same values as a full forward pass."""

    def __init__(self, qsim: QuantSim, batches: list[torch.Tensor]) -> None:
        self.graph_module = qsim.model
        self.nodes = list(self.graph_module.graph.nodes)
        self.interpreter = fx.Interpreter(self.graph_module)
        index = {node: i for i, node in enumerate(self.nodes)}
        self.last_use = {node: max((index[user] for user in node.users), default=-1) for node in self.nodes}
        self.batches = batches
        self.envs: list[dict[fx.Node, object]] = [{} for _ in batches]
        self.start = 0  # the first node whose value may be stale

    def node_of(self, name: str) -> int:
        for i, node in enumerate(self.nodes):
            if node.op == "call_module" and node.target == name:
                return i
        raise RuntimeError(f"layer {name} did not run in the quantized model's forward pass")

    def input_of(self, name: str) -> list[torch.Tensor]:
        """Each batch's first input to layer ``name``, with every layer before it as it is now."""
        stop = self.node_of(name)
        inputs: list[torch.Tensor] = []
        with torch.no_grad():
            for batch, env in zip(self.batches, self.envs, strict=True):
                self.interpreter.env = env
                for i in range(self.start, stop):
                    node = self.nodes[i]
                    env[node] = batch if node.op == "placeholder" else self.interpreter.run_node(node)
                for node in [n for n in env if self.last_use[n] < stop]:
                    del env[node]  # no node from here on uses it
                arg = self.nodes[stop].args[0]
                assert isinstance(arg, fx.Node)
                value = env[arg]
                assert isinstance(value, torch.Tensor)
                inputs.append(value)
        self.start = stop
        return inputs


def _quantized_inputs(prefix: _QuantizedPrefix, name: str, layer: nn.Module, positions: torch.Tensor) -> torch.Tensor:
    """The quantized network's input patch rows of ``layer`` at its sampled ``positions``."""
    rows, offset = [], 0
    for x in prefix.input_of(name):
        rows.append(patch_rows(layer, x, positions[offset:offset + x.shape[0]]))
        offset += x.shape[0]
    return torch.cat(rows)


__all__ = ["Activation", "LayerData", "channel_view", "fit_layers", "grouped_weight", "layer_data", "layer_rows",
           "patch_rows"]
