"""``torch-fbgemm``, ``torch-x86``, ``torch-qnnpack``, ``torch-onednn``: the QuantSim converted to PyTorch's
quantized modules and run on the engine's integer kernels.

:func:`convert_to_torch_int8` walks the QuantSim's graph and writes a new one in which every tensor
the QuantSim quantizes is a quantized tensor with exactly the QuantSim's scale and zero point:

* the input: ``torch.quantize_per_tensor``;
* biases: fbgemm, x86 and onednn add the float bias after scaling the int32 accumulator, qnnpack rounds
  it to int32 codes at input x weight scale; ``placement`` tells the QuantSim which (``Placement.int32_bias``);
* a conv / linear with its fused activation and output quantizer: one ``torch.ao.nn.quantized``
  ``Conv2d`` / ``Linear`` (``ConvReLU2d`` / ``LinearReLU`` for a fused ReLU) whose weight is built
  from the QuantSim's own integer codes (so on-grid AdaRound weights deploy exactly, nothing is
  recalibrated), output scale and zero point from the output quantizer; a fused ReLU6 / hardtanh /
  per-channel clip (``ChannelClippedReLU`` after CLE) is a clamp of the integer output at the codes of
  its bounds, the same as clipping before quantizing (rounding is monotone);
* a residual add (with a fused ReLU): ``quantized::add`` / ``quantized::add_relu`` at the add's qparams;
* average pooling: the QuantSim requantizes the pooled tensor at qparams of its own, where torch's
  quantized pooling keeps the input's; to deploy the QuantSim exactly the pooled values are computed
  from the dequantized input and quantized with the QuantSim's qparams (one float op on a 7x7 map);
* pass-through ops (flatten, padding, max pooling, reshapes) run on the quantized tensor; TensorFlow
  "SAME" padding pads with the zero point, the image of 0.

The engine (``torch.backends.quantized.engine``) is set for every call. ``torch.ao.quantization`` and
quantized tensors are deprecated upstream (pytorch/pytorch#184982): their replacements are the PT2E
flow (``torch.export`` + ``torchao.quantization.pt2e``) lowering to XNNPACK / x86-Inductor / ExecuTorch;
this backend keeps every use of them in this one module.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from mqbench import hookimpl
from mqbench.backends import FLOAT, QUANTSIM, Artifact, Deployed, Runtime
from mqbench.layers import ChannelClippedReLU
from mqbench.quant import functional as Q
from mqbench.quant.qsim import Placement, QuantConv2d, Quantizer, QuantLinear, QuantSim
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme

ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")
_POOLS = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)


def _activation_of(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, Any] | None:
    """What a fused activation node computes: ``("relu", None)``, ``("clip", (lo, hi))`` or
    ``("channel_clip", upper)``; None when ``node`` is not an activation."""
    m = modules.get(str(node.target)) if node.op == "call_module" else None
    if isinstance(m, nn.ReLU) or (node.op == "call_function" and node.target in (F.relu, torch.relu)) or (
            node.op == "call_method" and node.target == "relu"):
        return ("relu", None)
    if isinstance(m, nn.ReLU6) or (node.op == "call_function" and node.target is F.relu6):
        return ("clip", (0.0, 6.0))
    if isinstance(m, nn.Hardtanh):
        return ("clip", (float(m.min_val), float(m.max_val)))
    if isinstance(m, ChannelClippedReLU):
        return ("channel_clip", m.upper.detach().clone())
    if node.op == "call_function" and node.target is F.hardtanh:
        lo = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
        hi = node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0)
        return ("clip", (float(lo), float(hi)))  # type: ignore[arg-type]
    if (node.op == "call_function" and node.target is torch.clamp) or (node.op == "call_method" and node.target == "clamp"):
        lo = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
        hi = node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None)
        return ("clip", (lo, hi))
    return None


def _qparams(q: Quantizer) -> tuple[float, int]:
    if q.scale is None or q.zero_point is None or q.scale.dim() != 0:
        raise ValueError(f"quantizer {q.name} needs calibrated per-tensor qparams to deploy on torch")
    return float(q.scale), int(q.zero_point)


def quantized_weight(layer: QuantConv2d | QuantLinear) -> torch.Tensor:
    """The layer's weight as a qint8 tensor holding exactly the QuantSim's codes and qparams."""
    q = layer.weight_quantizer
    if q.scale is None or q.zero_point is None:
        raise ValueError(f"weight quantizer {q.name} has no qparams")
    if q.qmin < -128 or q.qmax > 127:
        raise ValueError(f"weight quantizer {q.name} has {q.bits} bits; torch's quantized kernels take int8 weights")
    codes = Q.quantize(layer.weight.detach(), q.scale, q.zero_point, qmin=q.qmin, qmax=q.qmax, axis=q.axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated upstream (module docstring)
        if q.axis is None:
            return torch._make_per_tensor_quantized_tensor(codes.to(torch.int8), float(q.scale), int(q.zero_point))
        return torch._make_per_channel_quantized_tensor(codes.to(torch.int8), q.scale.double(), q.zero_point, q.axis)


def quantize_input(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``x`` as a quint8 tensor with codes ``round(x / s) + z``, the QuantSim's (and ONNX's) arithmetic.

    ``torch.quantize_per_tensor`` rounds ``x / s + z`` instead, which breaks ties by the parity of
    ``q + z`` rather than ``q``; normalised 8-bit images put many inputs exactly on ties (on synthetic
    images half the input codes differed by one), so the input is quantized here as the QuantSim does.
    """
    codes = Q.quantize(x, torch.tensor(scale), torch.tensor(zero_point), qmin=0, qmax=255)
    return torch._make_per_tensor_quantized_tensor(codes.to(torch.uint8), scale, zero_point)


class ChannelClamp(nn.Module):
    """Clamp a quantized tensor's codes per channel (axis 1) at ``[lower, upper]`` codes."""

    lower: torch.Tensor
    upper: torch.Tensor

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("lower", lower.view(1, -1, 1, 1).to(torch.int32))
        self.register_buffer("upper", upper.view(1, -1, 1, 1).to(torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = x.int_repr().to(torch.int32)
        lower, upper = self.lower.view(1, -1, *([1] * (codes.dim() - 2))), self.upper.view(1, -1, *([1] * (codes.dim() - 2)))
        clamped = torch.minimum(torch.maximum(codes, lower), upper).to(torch.uint8)
        return torch._make_per_tensor_quantized_tensor(clamped, x.q_scale(), x.q_zero_point())


class FloatPool(nn.Module):
    """Average pooling of a quantized tensor computed in float and requantized at given qparams."""

    def __init__(self, pool: Callable[[torch.Tensor], torch.Tensor], scale: float, zero_point: int) -> None:
        super().__init__()
        self.pool, self.scale, self.zero_point = pool, scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.quantize_per_tensor(self.pool(x.dequantize()), self.scale, self.zero_point, torch.quint8)


def _clamp_module(activation: tuple[str, Any], scale: float, zero_point: int) -> nn.Module | None:
    """The integer clamp equal to ``activation`` followed by quantization at ``(scale, zero_point)``
    (None when the quantization range already lies inside the activation's range)."""
    kind, bounds = activation
    lo_code, hi_code = 0, 255
    if kind == "channel_clip":
        upper = torch.clamp(torch.round(bounds / scale) + zero_point, 0, 255)
        lower = torch.full_like(upper, float(max(zero_point, 0)))
        return ChannelClamp(lower, upper)
    lo, hi = bounds
    lo_q = lo_code if lo is None else int(min(max(round(lo / scale) + zero_point, 0), 255))
    hi_q = hi_code if hi is None else int(min(max(round(hi / scale) + zero_point, 0), 255))
    if lo_q <= lo_code and hi_q >= hi_code:
        return None
    return ChannelClamp(torch.tensor([lo_q]), torch.tensor([hi_q]))


def _bound(node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor]:
    """``node``'s function applied to a new first argument, its other arguments kept."""
    fn, rest, kwargs = node.target, node.args[1:], dict(node.kwargs)
    assert callable(fn)
    return lambda t: fn(t, *rest, **kwargs)


def convert_to_torch_int8(qsim: QuantSim) -> fx.GraphModule:
    """The calibrated ``qsim`` as a graph of PyTorch quantized modules (module docstring)."""
    gm = qsim.model
    modules = dict(gm.named_modules())
    act_q: dict[str, Quantizer] = {}
    for node in gm.graph.nodes:
        m = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(m, Quantizer) and m.kind == "activation":
            act_q[node.name] = m
    graph = fx.Graph()
    root = nn.Module()
    env: dict[fx.Node, fx.Node] = {}  # QuantSim node -> new node producing the *quantized* tensor
    counter = [0]

    def add_module(module: nn.Module, hint: str) -> str:
        counter[0] += 1
        name = f"{hint.replace('.', '_')}_{counter[0]}"
        root.add_module(name, module)
        return name

    def output_quantizer(node: fx.Node) -> tuple[list[fx.Node], tuple[str, Any] | None, Quantizer]:
        """Follow ``node`` through a fused activation to its activation quantizer: the nodes the quantized op
        computes (``node``, the activation, the quantizer), the activation, and the quantizer."""
        covered = [node]
        users = list(node.users)
        activation = None
        if len(users) == 1 and users[0].name not in act_q:
            activation = _activation_of(users[0], modules)
            if activation is not None:
                node = users[0]
                covered.append(node)
                users = list(node.users)
        quantizers = [u for u in users if u.name in act_q]
        if len(users) != 1 or not quantizers:
            raise ValueError(f"{node.name}: torch's quantized kernels need its output quantized right after it")
        return [*covered, quantizers[0]], activation, act_q[quantizers[0].name]

    for node in gm.graph.nodes:
        if node in env:
            continue
        m = modules.get(str(node.target)) if node.op == "call_module" else None
        if node.op == "placeholder":
            x = graph.placeholder(node.name)
            users = [u for u in node.users if u.name in act_q]
            if not users:
                raise ValueError("torch's quantized kernels need the input quantized (Placement.quantize_input)")
            scale, zp = _qparams(act_q[users[0].name])
            env[users[0]] = graph.call_function(quantize_input, (x, scale, zp))
            env[node] = env[users[0]]
        elif isinstance(m, (QuantConv2d, QuantLinear)):
            covered, activation, quantizer = output_quantizer(node)
            scale, zp = _qparams(quantizer)
            relu = activation is not None and activation[0] == "relu"
            qm: Any
            if isinstance(m, QuantConv2d):
                conv_cls = torch.ao.nn.intrinsic.quantized.ConvReLU2d if relu else torch.ao.nn.quantized.Conv2d
                qm = conv_cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                              m.groups, m.bias is not None)
            else:
                linear_cls = torch.ao.nn.intrinsic.quantized.LinearReLU if relu else torch.ao.nn.quantized.Linear
                qm = linear_cls(m.in_features, m.out_features, m.bias is not None)
            qm.set_weight_bias(quantized_weight(m), None if m.bias is None else m.bias.detach().float())
            qm.scale, qm.zero_point = scale, zp
            arg = env[node.args[0]]
            if isinstance(m, QuantConv2d) and m.tf_same:
                from mqbench.layers import tf_same_pad
                arg = graph.call_function(tf_same_pad, (arg, m.kernel_size, m.stride, m.dilation))
            out = graph.call_module(add_module(qm, str(node.target)), (arg,))
            if activation is not None and not relu:
                clamp = _clamp_module(activation, scale, zp)
                if clamp is not None:
                    out = graph.call_module(add_module(clamp, "clamp"), (out,))
            env.update(dict.fromkeys(covered, out))
        elif node.op in ("call_function", "call_method") and (node.target in (operator.add, torch.add) or node.target == "add"):
            covered, activation, quantizer = output_quantizer(node)
            scale, zp = _qparams(quantizer)
            relu = activation is not None and activation[0] == "relu"
            a, b = (env[arg] for arg in node.args[:2])
            op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
            out = graph.call_function(op, (a, b, scale, zp))
            if activation is not None and not relu:
                clamp = _clamp_module(activation, scale, zp)
                if clamp is not None:
                    out = graph.call_module(add_module(clamp, "clamp"), (out,))
            env.update(dict.fromkeys(covered, out))
        elif isinstance(m, _POOLS) or (node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, F.avg_pool2d)):
            users = [u for u in node.users if u.name in act_q]
            pool: Callable[[torch.Tensor], torch.Tensor] = m if isinstance(m, _POOLS) else _bound(node)
            if users:
                scale, zp = _qparams(act_q[users[0].name])
            else:  # the runtime convention: pooling keeps its input's qparams
                raise ValueError(f"{node.name}: average pooling without an output quantizer (use requantize_pooling)")
            out = graph.call_module(add_module(FloatPool(pool, scale, zp), "pool"), (env[node.args[0]],))
            env[users[0]] = env[node] = out
        elif node.op == "output":
            result = env[node.args[0]]
            graph.output(graph.call_method("dequantize", (result,)))
        elif isinstance(m, Quantizer):
            producer = node.args[0]
            assert isinstance(producer, fx.Node)
            if producer.op == "call_module":
                op_name = type(modules[str(producer.target)]).__name__
            else:
                op_name = getattr(producer.target, "__name__", str(producer.target))
            raise ValueError(f"operator {op_name} ({m.name}) has no conversion to torch's quantized kernels here "
                             "(convs, linears, adds, average pooling and pass-through ops convert)")
        elif node.op == "get_attr":
            raise ValueError(f"{node.name}: constant tensors are not supported by the torch int8 conversion")
        else:  # pass-through ops (flatten, max pooling, padding, reshapes) on the quantized tensor
            args = fx.map_arg(node.args, lambda a: env[a])
            kwargs = fx.map_arg(node.kwargs, lambda a: env[a])
            if node.op == "call_module":
                assert m is not None
                env[node] = graph.call_module(add_module(m, str(node.target)), args, kwargs)
            elif node.op == "call_function":
                env[node] = graph.call_function(node.target, args, kwargs)
            else:
                env[node] = graph.call_method(str(node.target), args, kwargs)
    return fx.GraphModule(root, graph).eval()


class TorchInt8Model:
    """A converted model run on one quantized engine (set for every call: the setting is global)."""

    def __init__(self, module: nn.Module, engine: str) -> None:
        self.module, self.engine = module, engine

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        torch.backends.quantized.engine = self.engine
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.module(inputs)


class TorchInt8(Runtime):
    """One PyTorch quantized engine."""

    def __init__(self, engine: str, threads: int | None = None) -> None:
        self.engine = engine
        self.name = f"torch-{engine}"
        self.formats = frozenset({FLOAT, QUANTSIM, torch_ao_format(engine)})
        self.description = f"PyTorch quantized kernels, {engine} engine; the QuantSim's exact qparams and codes"
        self.threads = threads or len(os.sched_getaffinity(0))

    def unavailable(self) -> str | None:
        if self.engine not in torch.backends.quantized.supported_engines:
            engines = ", ".join(torch.backends.quantized.supported_engines)
            return f"this torch build has no {self.engine} engine (it has {engines})"
        return None

    def check_scheme(self, scheme: QuantScheme) -> str | None:
        if scheme.weight_bits != 8 or scheme.act_bits != 8 or scheme.first_last_bits is not None:
            return "PyTorch's quantized kernels take 8-bit weights and 8-bit activations (a w8a8 scheme)"
        if scheme.act_symmetric:
            return "PyTorch's quantized convolutions take unsigned (quint8) activations: drop -sym"
        if not scheme.weight_symmetric:
            return "PyTorch's quantized kernels need weight zero points of 0 (symmetric qint8 weights): drop -asym"
        return None

    def placement(self, scheme: QuantScheme) -> Placement:
        # fbgemm, x86 and onednn add the float bias after scaling the accumulator; qnnpack rounds it to int32
        # at input x weight scale when packing (tests/unit/test_torch_int8.py checks both on the kernels).
        # With -rr, torch's kernels store full 8-bit codes over the 7-bit grid's qparams (full_range_storage).
        return Placement(int32_bias=self.engine == "qnnpack", full_range_storage=True)

    def load(self, artifact: Artifact) -> Deployed:
        if artifact.format == FLOAT:
            return artifact.payload.eval()
        if artifact.format == QUANTSIM:
            torch.backends.quantized.engine = self.engine  # weights are packed for the engine active now
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
                return TorchInt8Model(convert_to_torch_int8(artifact.payload), self.engine)
        if artifact.format == torch_ao_format(self.engine):  # a torch.ao-converted module (the torch.ao toolkit)
            return TorchInt8Model(artifact.payload, self.engine)
        raise ValueError(f"{self.name} cannot load a {artifact.format} artifact")

    def info(self) -> dict[str, Any]:
        return {"runtime": f"torch {torch.__version__}", "engine": self.engine, "threads": torch.get_num_threads(),
                "recommended_reduce_range": self.engine in ("fbgemm", "x86"),
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def torch_ao_format(engine: str) -> str:
    """The artifact format of a module converted by torch.ao for ``engine`` (weights packed for that engine)."""
    return f"torch.ao-quantized[{engine}]"


@hookimpl
def mqbench_register_runtimes(register: Registry[Runtime]) -> None:
    for engine in ENGINES:
        register(TorchInt8(engine))
