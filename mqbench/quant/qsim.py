"""QuantSim: a float model with fake-quantizers where the target runtime quantizes.

The backend owns *where* quantizers go (a :class:`Placement`); methods own *how* their parameters
are chosen (they set ranges or qparams on the :class:`Quantizer` modules). ``QuantSim.from_float``
traces the model with torch.fx, folds BatchNorm, swaps conv/linear layers for versions with a weight
quantizer, and inserts an activation quantizer after each point the runtime writes an integer tensor:

* the network input;
* each conv/linear output, after the activation fused into it (ReLU, ReLU6, Hardtanh) when that
  activation is its only consumer;
* each residual add (after a fused ReLU), each concatenation;
* pooling outputs where the runtime requantizes (average pooling, mean);
* any other op the runtime executes in integer arithmetic.

Pass-through ops that keep their input's qparams (max pooling, flatten, reshape, dropout, identity)
get no quantizer.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn

from mqbench.layers import ChannelClippedReLU, Conv2dSame, tf_same_pad
from mqbench.quant import functional as Q
from mqbench.quant.estimators import Grid, Observer
from mqbench.quant.graph import LayerInfo, fold_batchnorm, trace, weighted_layers
from mqbench.schemes import QuantScheme

Mode = Literal["quantize", "observe", "off"]


class Quantizer(nn.Module):
    """Fake-quantizes one tensor. ``mode``: ``quantize`` (needs qparams), ``observe`` (feeds
    ``observer`` and passes the float tensor through), or ``off`` (identity)."""

    def __init__(self, name: str, kind: Literal["weight", "activation"], bits: int, symmetric: bool,
                 signed: bool, power_of_two: bool, axis: int | None,
                 saturation: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.name, self.kind = name, kind
        self.bits, self.symmetric, self.signed, self.power_of_two, self.axis = bits, symmetric, signed, power_of_two, axis
        self.qmin, self.qmax = Q.quant_range(bits, signed)  # the grid qparams are chosen for
        # The codes the runtime's tensor can hold, where values saturate: the grid's own range, except where a
        # runtime chooses qparams for a reduced grid but stores full 8-bit codes (Placement.full_range_storage).
        self.saturate_min, self.saturate_max = saturation or (self.qmin, self.qmax)
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)
        self.observer: Observer | None = None
        self.mode: Mode = "quantize"
        # Quantization-aware training (mqbench.methods.qat) installs a module here that fake-quantizes with
        # trainable scales in ``quantize`` mode; it writes the learned qparams back and removes itself after.
        self.learned: nn.Module | None = None

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def grid(self) -> Grid:
        """The integer grid this quantizer maps onto (what clipping estimators optimise for)."""
        return Grid(self.bits, self.symmetric, self.signed, self.power_of_two)

    @property
    def calibrated(self) -> bool:
        return self.scale is not None

    def set_range(self, min_val: torch.Tensor, max_val: torch.Tensor) -> None:
        """Set qparams covering ``[min_val, max_val]`` with this quantizer's bits and symmetry."""
        scale, zp = Q.qparams_from_range(min_val, max_val, bits=self.bits, symmetric=self.symmetric,
                                         signed=self.signed, power_of_two=self.power_of_two)
        self.set_qparams(scale, zp)

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        if scale.dim() != (0 if self.axis is None else 1) or zero_point.shape != scale.shape:
            kind = "per-tensor (0-d)" if self.axis is None else "per-channel (1-d)"
            raise ValueError(f"quantizer {self.name} needs {kind} scale and zero_point of equal shape, got "
                             f"{tuple(scale.shape)} and {tuple(zero_point.shape)}")
        self.scale = scale.detach().float().clone()
        self.zero_point = zero_point.detach().to(torch.int64).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe":
            if self.observer is None:
                raise RuntimeError(f"quantizer {self.name} is in observe mode without an observer")
            self.observer.observe(x)
            return x
        if self.learned is not None:
            return self.learned(x)
        if self.scale is None or self.zero_point is None:
            raise RuntimeError(f"quantizer {self.name} has no qparams: the pipeline needs a calibrate step")
        # An activation's NaN propagates to the logits, which every evaluation refuses (no pass over x to check it).
        return Q.fake_quantize(x, self.scale, self.zero_point, qmin=self.saturate_min, qmax=self.saturate_max,
                               axis=self.axis, check_finite=self.kind == "weight")

    def export(self) -> dict[str, Any]:
        """JSON-serialisable qparams and settings."""
        return {
            "kind": self.kind, "bits": self.bits, "symmetric": self.symmetric, "signed": self.signed,
            "power_of_two": self.power_of_two, "axis": self.axis, "qmin": self.qmin, "qmax": self.qmax,
            "saturate_min": self.saturate_min, "saturate_max": self.saturate_max,
            "scale": None if self.scale is None else self.scale.tolist(),
            "zero_point": None if self.zero_point is None else self.zero_point.tolist(),
        }

    def extra_repr(self) -> str:
        return f"{self.name}, {self.kind}, bits={self.bits}, mode={self.mode}, per_channel={self.per_channel}"


def quantized_bias(bias: torch.Tensor | None, weight_quantizer: Quantizer,
                   input_quantizer: Callable[[], Quantizer | None] | None) -> torch.Tensor | None:
    """``bias`` as an integer runtime adds it: int32 codes at scale ``input_scale * weight_scale`` (zero
    point 0), when the layer's input and weight are both quantized to at most 8 bits (the int32
    accumulator of int8 kernels; wider schemes keep the float bias, as a wider accumulator would).

    ONNX Runtime's QLinearConv (and TFLite) accumulate the bias in int32 at that scale; the rounding is at
    most half a step of it, up to 0.15 of an output step on MobileNetV2 tf2ptq (w8a8-pc), enough to flip
    0.4% of a layer's output codes if the simulation kept the float bias. PyTorch's quantized kernels take
    a float bias instead: their backends place quantizers with ``Placement(int32_bias=False)``.
    """
    if torch.onnx.is_in_onnx_export():  # the ONNX export writes the int32 bias itself (backends.ort.export)
        return bias
    q_in = input_quantizer() if input_quantizer is not None else None
    if (bias is None or q_in is None or q_in.mode != "quantize" or weight_quantizer.mode != "quantize"
            or q_in.scale is None or weight_quantizer.scale is None or q_in.scale.dim() != 0
            or q_in.bits > 8 or weight_quantizer.bits > 8):
        return bias
    scale = (q_in.scale * weight_quantizer.scale).expand(bias.shape[0]).contiguous()
    return Q.fake_quantize(bias, scale, torch.zeros(bias.shape[0], dtype=torch.int64), qmin=-(2 ** 31),
                           qmax=2 ** 31 - 1, axis=0)


class QuantConv2d(nn.Conv2d):
    """Conv2d whose weight passes through ``weight_quantizer`` and whose bias is quantized to int32 at the
    input scale times the weight scale (:func:`quantized_bias`), as integer runtimes do."""

    weight_quantizer: Quantizer
    input_quantizer: Callable[[], Quantizer | None] | None = None  # the quantizer of this layer's input
    tf_same: bool = False  # TensorFlow "SAME" padding (from Conv2dSame), applied before the conv

    @classmethod
    def from_float(cls, conv: nn.Conv2d, quantizer: Quantizer) -> QuantConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)  # type: ignore[arg-type]
        new.load_state_dict(conv.state_dict())
        new.weight_quantizer = quantizer
        new.tf_same = isinstance(conv, Conv2dSame)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_same:
            x = tf_same_pad(x, self.kernel_size, self.stride, self.dilation)  # type: ignore[arg-type]
        return self._conv_forward(x, self.weight_quantizer(self.weight),
                                  quantized_bias(self.bias, self.weight_quantizer, self.input_quantizer))


class QuantLinear(nn.Linear):
    """Linear whose weight passes through ``weight_quantizer``, its bias quantized as :class:`QuantConv2d`'s."""

    weight_quantizer: Quantizer
    input_quantizer: Callable[[], Quantizer | None] | None = None

    @classmethod
    def from_float(cls, linear: nn.Linear, quantizer: Quantizer) -> QuantLinear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None)
        new.load_state_dict(linear.state_dict())
        new.weight_quantizer = quantizer
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_quantizer(self.weight),
                        quantized_bias(self.bias, self.weight_quantizer, self.input_quantizer))


_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, ChannelClippedReLU)
_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh, torch.clamp}
_PASSTHROUGH_MODULES = (nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
# Zero padding keeps the input's qparams (0 is exactly representable), as do slicing and reshaping.
_PASSTHROUGH_FUNCTIONS = {torch.flatten, F.max_pool2d, F.dropout, torch.reshape, operator.getitem, getattr, F.pad}
_PASSTHROUGH_METHODS = {"flatten", "view", "reshape", "contiguous", "size", "squeeze", "unsqueeze"}
_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
_POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.avg_pool2d, torch.mean}
_ADD_FUNCTIONS = {operator.add, torch.add}


@dataclass(frozen=True)
class Placement:
    """Where a backend's runtime quantizes (see the module docstring). Backends pass their own."""

    quantize_input: bool = True
    fuse_activations: bool = True
    fuse_add_relu: bool = True
    requantize_pooling: bool = True
    # Biases added as int32 codes at input x weight scale (ONNX Runtime, TFLite); False: added in float
    # after requantization (PyTorch's fbgemm / x86 kernels take a float bias).
    int32_bias: bool = True
    # With reduce_range (-rr): qparams are chosen for the 7-bit grid either way; True: the runtime still stores
    # 8-bit codes, so values beyond the calibrated range saturate at 0..255, not 0..127 (PyTorch's quantized
    # kernels: its observers compute reduce_range qparams, its quint8 tensors and requantization clamp at 255).
    full_range_storage: bool = False


class QuantSim(nn.Module):
    """The simulated quantized model. Build with :meth:`from_float`."""

    def __init__(self, model: fx.GraphModule, scheme: QuantScheme, layers: list[LayerInfo],
                 weight_quantizers: dict[str, Quantizer], act_quantizers: dict[str, Quantizer],
                 placement: Placement) -> None:
        super().__init__()
        self.model = model
        self.scheme = scheme
        self.layers = layers
        self.placement = placement
        self.weight_quantizers = weight_quantizers
        self.act_quantizers = act_quantizers
        # Original float weights of layers whose deployed weight a method replaced (set_deployed_weight).
        self.float_weights: dict[str, torch.Tensor] = {}

    @classmethod
    def from_float(cls, model: nn.Module, scheme: QuantScheme, placement: Placement | None = None) -> QuantSim:
        """Trace ``model``, fold BN, and place quantizers for ``scheme`` as ``placement`` says."""
        if scheme.is_float:
            raise ValueError("QuantSim needs a quantizing scheme, not fp32")
        placement = placement or Placement()
        gm = fold_batchnorm(trace(model))
        layers = weighted_layers(gm)
        weight_q: dict[str, Quantizer] = {}
        first_last = {layers[0].name, layers[-1].name} if layers else set()
        for info in layers:
            layer = gm.get_submodule(info.name)
            bits = scheme.layer_weight_bits(info.name in first_last)
            assert bits is not None
            quantizer = Quantizer(info.name, "weight", bits, scheme.weight_symmetric, True,
                                  scheme.power_of_two, 0 if scheme.weight_granularity == "channel" else None)
            new = (QuantConv2d.from_float(layer, quantizer) if isinstance(layer, nn.Conv2d)
                   else QuantLinear.from_float(layer, quantizer))  # type: ignore[arg-type]
            parent_name, _, attr = info.name.rpartition(".")
            setattr(gm.get_submodule(parent_name) if parent_name else gm, attr, new)
            weight_q[info.name] = quantizer
        act_q: dict[str, Quantizer] = {}
        if scheme.act_bits is not None:
            act_q = _insert_activation_quantizers(gm, scheme, placement, first_last)
            if placement.int32_bias:
                _bind_input_quantizers(gm)
        gm.recompile()
        return cls(gm, scheme, layers, weight_q, act_q, placement)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def layer_weight(self, name: str) -> torch.Tensor:
        """The float (BN-folded) weight of layer ``name``."""
        weight = self.model.get_submodule(name).weight
        assert isinstance(weight, torch.Tensor)
        return weight

    def set_deployed_weight(self, name: str, weight: torch.Tensor) -> None:
        """Replace layer ``name``'s weight by ``weight`` (for example on-grid values from learned rounding),
        keeping the original float weight for :meth:`float_mode`, so later steps still compare with the
        float model."""
        layer_weight = self.layer_weight(name)
        if weight.shape != layer_weight.shape:
            raise ValueError(f"layer {name}: weight of shape {tuple(weight.shape)} for {tuple(layer_weight.shape)}")
        if name not in self.float_weights:
            self.float_weights[name] = layer_weight.detach().clone()
        layer_weight.data.copy_(weight)

    def fused_activation(self, name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The activation fused into layer ``name`` (its sole consumer: ReLU, ReLU6, a clip), as a function
        of the layer's output with channels on axis 1; None when the layer's output is used as it is."""
        modules = dict(self.model.named_modules())
        for node in self.model.graph.nodes:
            if node.op == "call_module" and node.target == name:
                users = list(node.users)
                if len(users) != 1 or not is_activation(users[0], modules):
                    return None
                act = users[0]
                rest, kwargs = act.args[1:], act.kwargs
                if act.op == "call_module":
                    return modules[str(act.target)]
                if act.op == "call_method":
                    method = str(act.target)
                    return lambda t: getattr(t, method)(*rest, **kwargs)
                fn = act.target
                assert callable(fn)
                return lambda t: fn(t, *rest, **kwargs)
        raise KeyError(f"no layer {name!r} in the quantized model")

    def quantizers(self) -> Iterator[Quantizer]:
        yield from self.weight_quantizers.values()
        yield from self.act_quantizers.values()

    def set_mode(self, mode: Mode, which: Literal["all", "weights", "activations"] = "all") -> None:
        targets = {"all": list(self.quantizers()), "weights": list(self.weight_quantizers.values()),
                   "activations": list(self.act_quantizers.values())}[which]
        for q in targets:
            q.mode = mode

    @contextmanager
    def float_mode(self) -> Iterator[None]:
        """Temporarily the float model (BN folded): every quantizer off, original float weights back."""
        saved = {id(q): q.mode for q in self.quantizers()}
        deployed = {name: self.layer_weight(name).detach().clone() for name in self.float_weights}
        self.set_mode("off")
        for name, weight in self.float_weights.items():
            self.layer_weight(name).data.copy_(weight)
        try:
            yield
        finally:
            for q in self.quantizers():
                q.mode = saved[id(q)]
            for name, weight in deployed.items():
                self.layer_weight(name).data.copy_(weight)

    def export_qparams(self) -> dict[str, Any]:
        return {"scheme": self.scheme.name,
                "weights": {n: q.export() for n, q in self.weight_quantizers.items()},
                "activations": {n: q.export() for n, q in self.act_quantizers.items()}}


def is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "clamp")


def activation_bounds(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[Any, Any]:
    """(lower, upper) of a fused activation (None = unbounded; a tensor = per channel)."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        if isinstance(m, nn.ReLU6):
            return 0.0, 6.0
        if isinstance(m, nn.ReLU):
            return 0.0, None
        if isinstance(m, nn.Hardtanh):
            return float(m.min_val), float(m.max_val)
        if isinstance(m, ChannelClippedReLU):
            return 0.0, m.upper
        raise ValueError(f"activation module {type(m).__name__}")
    target, args, kwargs = node.target, node.args[1:], node.kwargs
    if target in (F.relu, torch.relu, "relu"):
        return 0.0, None
    if target is F.relu6:
        return 0.0, 6.0
    if target is F.hardtanh:
        lo = args[0] if args else kwargs.get("min_val", -1.0)
        hi = args[1] if len(args) > 1 else kwargs.get("max_val", 1.0)
        return float(lo), float(hi)  # type: ignore[arg-type]
    if target in (torch.clamp, "clamp"):
        lo = args[0] if args else kwargs.get("min")
        hi = args[1] if len(args) > 1 else kwargs.get("max")
        return lo, hi
    raise ValueError(f"activation {target}")


def is_passthrough(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _PASSTHROUGH_MODULES)
    if node.op == "call_function":
        return node.target in _PASSTHROUGH_FUNCTIONS
    if node.op == "call_method":
        return node.target in _PASSTHROUGH_METHODS
    return node.op in ("get_attr", "output")


def is_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _POOL_MODULES)
    return (node.op == "call_function" and node.target in _POOL_FUNCTIONS) or (
        node.op == "call_method" and node.target == "mean")


def is_add(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in _ADD_FUNCTIONS) or
            (node.op == "call_method" and node.target == "add"))


def _point_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _not(node: fx.Node) -> Callable[[fx.Node], bool]:
    return lambda user: user is not node


def _bind_input_quantizers(gm: fx.GraphModule) -> None:
    """Give each quantized layer a reference to the activation quantizer of its input (through pass-through
    ops such as padding or flatten), for its int32 bias scale. A function, not a submodule, so the
    quantizer is not registered twice."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        layer = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(layer, (QuantConv2d, QuantLinear)):
            continue
        source = node.args[0]
        while isinstance(source, fx.Node) and is_passthrough(source, modules) and source.args:
            source = source.args[0]
        quantizer = modules.get(str(source.target)) if isinstance(source, fx.Node) and source.op == "call_module" else None
        if isinstance(quantizer, Quantizer):
            layer.input_quantizer = lambda q=quantizer: q


def _feeding_point(node: fx.Node, points: list[fx.Node], modules: dict[str, nn.Module]) -> fx.Node | None:
    """The quantization point whose output is ``node``'s input (through pass-through ops and unrequantized
    pooling), or None."""
    source = node.args[0] if node.args else None
    while isinstance(source, fx.Node) and source not in points:
        if not (is_passthrough(source, modules) or is_pool(source, modules)) or not source.args:
            return None
        source = source.args[0]
    return source if isinstance(source, fx.Node) else None


def _insert_activation_quantizers(gm: fx.GraphModule, scheme: QuantScheme, placement: Placement,
                                  first_last: set[str]) -> dict[str, Quantizer]:
    """Insert the activation quantizers; the inputs of the layers named in ``first_last`` get the scheme's
    first/last-layer bits (``-fl<B>``)."""
    modules = dict(gm.named_modules())
    points: list[fx.Node] = []
    covered: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node in covered or is_passthrough(node, modules):
            continue
        if node.op == "placeholder":
            if placement.quantize_input:
                points.append(node)
            continue
        m = modules.get(str(node.target)) if node.op == "call_module" else None
        point = node
        if isinstance(m, (nn.Conv2d, nn.Linear)) or is_add(node):
            fuse = placement.fuse_activations if not is_add(node) else placement.fuse_add_relu
            users = list(node.users)
            if fuse and len(users) == 1 and is_activation(users[0], modules):
                point = users[0]
                covered.add(point)
        elif is_pool(node, modules) and not placement.requantize_pooling:
            continue
        points.append(point)
    feeding_first_last = {_feeding_point(node, points, modules) for node in gm.graph.nodes
                          if node.op == "call_module" and str(node.target) in first_last}
    container = nn.ModuleDict()
    gm.add_module("activation_quantizers", container)
    quantizers: dict[str, Quantizer] = {}
    for point in points:
        name = _point_name(point)
        key = name.replace(".", "_")
        stored_bits = scheme.layer_act_bits(point in feeding_first_last)
        assert stored_bits is not None
        bits = stored_bits - 1 if scheme.reduce_range else stored_bits
        storage = Q.quant_range(stored_bits, scheme.act_signed) if placement.full_range_storage else None
        q = Quantizer(name, "activation", bits, scheme.act_symmetric, scheme.act_signed, scheme.power_of_two, None,
                      saturation=storage)
        container[key] = q
        quantizers[name] = q
        with gm.graph.inserting_after(point):
            new = gm.graph.call_module(f"activation_quantizers.{key}", (point,))
        point.replace_all_uses_with(new, delete_user_cb=_not(new))
    gm.graph.lint()
    return quantizers
