"""``executorch-xnnpack``: ExecuTorch's runtime with the XNNPACK delegate, what a PyTorch model ships on to phones.

The calibrated QuantSim is written as the graph PyTorch's PT2E flow produces after ``convert_pt2e`` with
XNNPACK's conventions (:func:`pt2e_module`), from the QuantSim's own qparams and integer codes, nothing
recalibrated:

* every activation quantizer is a ``quantize_per_tensor -> dequantize_per_tensor`` pair of
  ``torch.ops.quantized_decomposed`` at its scale, in int8: the QuantSim's uint8 code ``q`` with zero point
  ``z`` is the int8 code ``q - 128`` with zero point ``z - 128`` (the same real values; XNNPACK's kernels take
  asymmetric int8 activations);
* a convolution or linear layer reads its weight as the QuantSim's int8 codes through ``dequantize_per_channel``
  (or ``_per_tensor``, zero point 0: XNNPACK's kernels take symmetric weights) and its bias as the QuantSim's
  int32 codes times ``input_scale * weight_scale``, which XNNPACK's lowering rounds back to exactly those codes;
* a pass-through op before a quantized op (TensorFlow "SAME" zero padding, the flatten before the classifier)
  keeps its input's qparams: a q/dq pair at those qparams after it, as the XNNPACK quantizer annotates them;
* every dequantize node read twice (a residual) is copied per reader, as ``convert_pt2e`` leaves the graph.

The graph is exported (``torch.export``, one static input shape), lowered with
``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` and run by ExecuTorch's runtime
(``executorch.runtime``). The record's ``deployment`` counts the operators inside XNNPACK delegates and names
any compute operator left outside them (run by ExecuTorch's portable kernels in float: the leaderboard's
``float ops:``). The thread count is that of ExecuTorch's shared threadpool, set before each call.

No integer simulation of XNNPACK: the fake-quant simulation's agreement is reported (README, runtimes).
"""

from __future__ import annotations

import logging
import operator
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import fx, nn

from mqbench import hookimpl
from mqbench.backends import FLOAT, QUANTSIM, Artifact, Deployed, Runtime, w8a8_problem
from mqbench.backends.ort.runtime import cpu_isa
from mqbench.layers import ChannelClippedReLU, tf_same_pad
from mqbench.quant import functional as Q
from mqbench.quant.qsim import QuantConv2d, Quantizer, QuantLinear, QuantSim, quantized_bias
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme

INT8_MIN, INT8_MAX = -128, 127
SIGNED_SHIFT = 128  # uint8 code - 128 = int8 code
# Operators that compute (not reshape or move data): one outside a delegate ran in float on portable kernels.
COMPUTE_OPS = frozenset({"convolution", "linear", "addmm", "mm", "add", "mul", "sub", "mean", "avg_pool2d",
                         "adaptive_avg_pool2d", "hardtanh", "relu", "clamp", "minimum", "maximum", "max_pool2d"})
QDQ_OPS = frozenset({"quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
                     "dequantize_per_channel"})


def _decomposed() -> Any:
    """``torch.ops.quantized_decomposed``, the q/dq operators of PT2E graphs (registered on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization.fx._decomposed  # registers torch.ops.quantized_decomposed
    return torch.ops.quantized_decomposed


class QuantizeDequantize(nn.Module):
    """``dequantize_per_tensor(quantize_per_tensor(x))`` in int8 at ``scale`` and ``zero_point``."""

    def __init__(self, scale: float, zero_point: int) -> None:
        super().__init__()
        self.scale, self.zero_point = scale, zero_point

    @classmethod
    def of(cls, quantizer: Quantizer) -> QuantizeDequantize:
        """The QuantSim's uint8 activation quantizer as the int8 pair holding the same values."""
        if quantizer.scale is None or quantizer.zero_point is None or quantizer.scale.dim() != 0:
            raise ValueError(f"quantizer {quantizer.name} needs calibrated per-tensor qparams to deploy on XNNPACK")
        if (quantizer.qmin, quantizer.saturate_min, quantizer.saturate_max) != (0, 0, 255):
            raise ValueError(f"quantizer {quantizer.name} is not an 8-bit uint8 activation quantizer")
        return cls(float(quantizer.scale), int(quantizer.zero_point) - SIGNED_SHIFT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _decomposed()
        codes = qd.quantize_per_tensor(x, self.scale, self.zero_point, INT8_MIN, INT8_MAX, torch.int8)
        return qd.dequantize_per_tensor(codes, self.scale, self.zero_point, INT8_MIN, INT8_MAX, torch.int8)


class DequantizedWeightLayer(nn.Module):
    """A QuantConv2d or QuantLinear as PT2E writes it: int8 weight codes dequantized, the bias on its int32 grid."""

    codes: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, layer: QuantConv2d | QuantLinear) -> None:
        super().__init__()
        q = layer.weight_quantizer
        input_quantizer = layer.input_quantizer() if layer.input_quantizer is not None else None
        if q.scale is None or q.zero_point is None or input_quantizer is None or input_quantizer.scale is None:
            raise ValueError(f"layer {q.name} needs calibrated weight and input quantizers to deploy on XNNPACK")
        if q.bits != 8 or bool((q.zero_point != 0).any()):
            raise ValueError(f"layer {q.name}: XNNPACK's kernels take symmetric 8-bit weights (zero point 0)")
        codes = Q.quantize(layer.weight.detach(), q.scale, q.zero_point, qmin=q.qmin, qmax=q.qmax, axis=q.axis)
        self.register_buffer("codes", codes.to(torch.int8))
        self.register_buffer("weight_scale", q.scale.detach().float().clone())
        self.register_buffer("weight_zero_point", torch.zeros_like(q.zero_point))
        self.axis = q.axis
        self.tensor_scale = float(q.scale) if q.axis is None else 0.0  # a constant of the graph, not a buffer
        self.input = QuantizeDequantize.of(input_quantizer)
        # The QuantSim's own bias on its int32 grid (codes x input scale x weight scale), which XNNPACK's lowering
        # rounds back to exactly those codes
        bias = quantized_bias(layer.bias, q, layer.input_quantizer)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def weight(self) -> torch.Tensor:
        qd = _decomposed()
        if self.axis is None:
            return qd.dequantize_per_tensor(self.codes, self.tensor_scale, 0, INT8_MIN, INT8_MAX, torch.int8)
        return qd.dequantize_per_channel(self.codes, self.weight_scale, self.weight_zero_point, self.axis,
                                         INT8_MIN, INT8_MAX, torch.int8)


class XnnpackConv2d(DequantizedWeightLayer):
    """The convolution with any ``padding="same"`` written as explicit pads (symmetric ones as the convolution's
    own padding, an even kernel's uneven ones as a zero pad before it): quantized ``padding="same"`` convolutions
    give wrong outputs in ExecuTorch's XNNPACK lowering (pytorch/executorch issues 20517, 20558)."""

    def __init__(self, layer: QuantConv2d) -> None:
        super().__init__(layer)
        self.tf_same, self.kernel_size, self.stride = layer.tf_same, layer.kernel_size, layer.stride
        self.dilation, self.groups = layer.dilation, layer.groups
        self.padding: Any = layer.padding
        self.pads: list[int] = []  # F.pad's order: last dimension first
        if layer.padding == "valid":
            self.padding = 0
        elif layer.padding == "same":
            totals = [d * (k - 1) for k, d in zip(layer.kernel_size, layer.dilation, strict=True)]
            if all(t % 2 == 0 for t in totals):
                self.padding = tuple(t // 2 for t in totals)
            else:
                self.padding, self.pads = 0, [p for t in reversed(totals) for p in (t // 2, t - t // 2)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # zero padding keeps the input's qparams (0 is on the grid): a q/dq pair at them after the pad
        if self.tf_same:
            x = self.input(tf_same_pad(x, self.kernel_size, self.stride, self.dilation))  # type: ignore[arg-type]
        elif self.pads:
            x = self.input(F.pad(x, self.pads))
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class XnnpackLinear(DequantizedWeightLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input(x), self.weight(), self.bias)  # the flatten before it keeps its qparams


class XnnpackChannelClip(nn.Module):
    """:class:`~mqbench.layers.ChannelClippedReLU` (ReLU6 after cross-layer equalization) before the quantizer
    ``output``: ``relu`` fused into the convolution's quantized output, then ``minimum`` with the bounds' codes, both
    at ``output``'s qparams. Exact: rounding is monotone, so ``Q(min(x, u)) = min(Q(x), Q(u))``."""

    upper_codes: torch.Tensor

    def __init__(self, clip: ChannelClippedReLU, output: QuantizeDequantize) -> None:
        super().__init__()
        self.output = output
        codes = torch.clamp(torch.round(clip.upper.detach() / output.scale) + output.zero_point, INT8_MIN, INT8_MAX)
        self.register_buffer("upper_codes", codes.to(torch.int8).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _decomposed()
        upper = qd.dequantize_per_tensor(self.upper_codes, self.output.scale, self.output.zero_point, INT8_MIN,
                                         INT8_MAX, torch.int8)
        return torch.minimum(self.output(torch.relu(x)), upper)


def pt2e_module(qsim: QuantSim) -> fx.GraphModule:
    """The calibrated ``qsim`` as a PT2E-style quantized module (module docstring): the QuantSim's graph with its
    activation quantizers and weighted layers replaced, everything else (activations, adds, pooling) as is."""
    modules = dict(qsim.model.named_modules())
    root: dict[str, nn.Module] = {}
    for node in qsim.model.graph.nodes:
        if node.op != "call_module":
            continue
        module = modules[str(node.target)]
        if isinstance(module, Quantizer):
            module = QuantizeDequantize.of(module)
        elif isinstance(module, QuantConv2d):
            module = XnnpackConv2d(module)
        elif isinstance(module, QuantLinear):
            module = XnnpackLinear(module)
        elif isinstance(module, ChannelClippedReLU):
            module = XnnpackChannelClip(module, QuantizeDequantize.of(_output_quantizer(node, modules)))
        root[str(node.target)] = module
    graph = fx.Graph()
    output = graph.graph_copy(qsim.model.graph, {})
    graph.output(output)
    return fx.GraphModule(root, graph).eval()


def _output_quantizer(node: fx.Node, modules: dict[str, nn.Module]) -> Quantizer:
    """The activation quantizer that reads ``node``'s output (its only reader)."""
    users = list(node.users)
    quantizer = modules.get(str(users[0].target)) if len(users) == 1 and users[0].op == "call_module" else None
    if not isinstance(quantizer, Quantizer):
        raise ValueError(f"{node.target} is not followed by one activation quantizer: XNNPACK cannot clip it")
    return quantizer


def duplicate_dequantize(gm: fx.GraphModule) -> None:
    """Every dequantize node read by several nodes becomes one copy per reader, as ``convert_pt2e`` leaves the
    graph (XNNPACK's partitioner groups each ``dq -> op -> q`` on its own)."""
    from torch.fx.node import map_arg

    qd = _decomposed()
    dequantize = (qd.dequantize_per_tensor.default, qd.dequantize_per_channel.default)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in dequantize:
            continue
        for user in list(node.users)[1:]:
            with gm.graph.inserting_after(node):
                copy = gm.graph.node_copy(node)
            user.args = map_arg(user.args, lambda n, c=copy, d=node: c if n is d else n)  # type: ignore[misc]
            user.kwargs = map_arg(user.kwargs, lambda n, c=copy, d=node: c if n is d else n)  # type: ignore[misc]
    gm.recompile()


@contextmanager
def _quiet() -> Iterator[None]:
    """torchao's import notices (CUDA extensions it cannot load) and torch.export's deprecation warnings."""
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)


def _op_name(target: Any) -> str:
    """``aten.convolution.default`` -> ``convolution``."""
    parts = getattr(target, "__name__", str(target)).split(".")
    return parts[-2] if len(parts) >= 3 else parts[0]


def lower_to_xnnpack(module: nn.Module, example: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
    """``module`` exported for inputs shaped as ``example``, lowered to XNNPACK, serialised as an ExecuTorch
    program; with what was delegated: operator counts inside the delegates and compute operators left outside."""
    with _quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        exported = torch.export.export(module, (example,))
        duplicate_dequantize(exported.graph_module)
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        program = edge.exported_program()
        delegated: Counter[str] = Counter()
        outside: Counter[str] = Counter()
        delegates = 0
        for node in program.graph.nodes:
            if node.op != "call_function":
                continue
            if _op_name(node.target) == "executorch_call_delegate":
                delegates += 1
                lowered = getattr(program.graph_module, str(node.args[0].target))
                delegated.update(_op_name(n.target) for n in lowered.original_module.graph.nodes
                                 if n.op == "call_function")
            elif node.target is not operator.getitem:
                outside[_op_name(node.target)] += 1
        buffer = edge.to_executorch().buffer
    return buffer, {"delegates": delegates,
                    "delegated_ops": dict(sorted((k, v) for k, v in delegated.items() if k not in QDQ_OPS)),
                    "delegated_qdq_ops": sum(v for k, v in delegated.items() if k in QDQ_OPS),
                    "ops_outside_delegates": dict(sorted(outside.items())),
                    "float_compute_ops": dict(sorted((k, v) for k, v in outside.items() if k in COMPUTE_OPS))}


_THREADPOOL = {"generation": 0}  # bumped each time ExecuTorch's threadpool is replaced


def set_threads(threads: int) -> int:
    """ExecuTorch's shared threadpool (XNNPACK's threads) resized to ``threads`` if it is not already; returns the
    pool's generation. Resizing replaces the pool, and an XNNPACK delegate keeps the pool it was initialised
    with: a method loaded before a resize must be loaded again (running it would use the freed pool)."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
        _THREADPOOL["generation"] += 1
    return _THREADPOOL["generation"]


class ExecuTorchModel:
    """A deployed model: one XNNPACK-lowered ExecuTorch program per input shape (static shapes, batch included;
    the evaluation's last, smaller batch is lowered too, so no timing ever runs padded). Each program's method is
    loaded under the threadpool it runs on (:func:`set_threads`)."""

    def __init__(self, module: nn.Module, threads: int) -> None:
        self.module, self.threads = module, threads
        self.buffers: dict[tuple[int, ...], bytes] = {}  # per input shape: the serialised program
        self.delegation: dict[tuple[int, ...], dict[str, Any]] = {}  # per sample shape
        # per input shape: (threadpool generation, program, method); the method lives in its program
        self.loaded: dict[tuple[int, ...], tuple[int, Any, Any]] = {}

    def _method(self, shape: tuple[int, ...]) -> Any:
        if shape not in self.buffers:
            buffer, info = lower_to_xnnpack(self.module, torch.zeros(shape))
            self.buffers[shape] = buffer
            self.delegation.setdefault(shape[1:], info)
        generation = set_threads(self.threads)
        if shape not in self.loaded or self.loaded[shape][0] != generation:
            from executorch.runtime import Runtime as EtRuntime

            program = EtRuntime.get().load_program(self.buffers[shape])
            self.loaded[shape] = (generation, program, program.load_method("forward"))
        return self.loaded[shape][2]

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.detach().float().contiguous()
        return self._method(tuple(inputs.shape)).execute((inputs,))[0].clone()

    def with_threads(self, threads: int) -> ExecuTorchModel:
        """The same programs run on ``threads`` threads (for latency)."""
        if threads == self.threads:
            return self
        clone = ExecuTorchModel(self.module, threads)
        clone.buffers, clone.delegation = self.buffers, self.delegation
        return clone

    def size_bytes(self) -> int:
        """The serialised ExecuTorch program's size (the ``.pte`` file a phone loads)."""
        if not self.buffers:
            raise RuntimeError("the program is lowered on its first call: call it before asking its size")
        return len(next(iter(self.buffers.values())))

    def deployment_info(self) -> dict[str, Any]:
        """For each sample shape run: what XNNPACK's delegates took and what was left outside them."""
        return {"x".join(map(str, key)): value for key, value in self.delegation.items()}


class ExecuTorchXnnpack(Runtime):
    name = "executorch-xnnpack"
    description = "ExecuTorch runtime, XNNPACK delegate (int8 asymmetric activations, symmetric int8 weights)"
    formats = frozenset({FLOAT, QUANTSIM})
    packages: ClassVar[tuple[str, ...]] = ("executorch",)

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or len(os.sched_getaffinity(0))

    def unavailable(self) -> str | None:
        try:
            import executorch.runtime  # noqa: F401
        except ImportError as exc:
            return f"{exc.name} is not installed (pip install 'mqbench[executorch]')"
        return None

    def check_scheme(self, scheme: QuantScheme) -> str | None:
        problem = w8a8_problem(scheme, "XNNPACK's int8 kernels")
        if problem:
            return problem
        if not scheme.weight_symmetric:
            return "XNNPACK's int8 kernels take symmetric weights (zero point 0): drop -asym"
        if scheme.reduce_range:
            return "XNNPACK stores full 8-bit activations: drop -rr"
        return None

    def load(self, artifact: Artifact) -> Deployed:
        if artifact.format == FLOAT:
            return ExecuTorchModel(artifact.payload.eval(), self.threads)
        if artifact.format == QUANTSIM:
            return ExecuTorchModel(pt2e_module(artifact.payload), self.threads)
        raise ValueError(f"{self.name} cannot load a {artifact.format} artifact")

    def info(self) -> dict[str, Any]:
        missing = self.unavailable()
        if missing:
            return {"runtime": None, "unavailable": missing}
        from importlib.metadata import version

        return {"runtime": f"executorch {version('executorch')}", "delegate": "XnnpackPartitioner",
                "threads": self.threads, "isa": cpu_isa(),
                "format": "PT2E quantized graph (quantized_decomposed q/dq, int8 activations), static shapes",
                "integer_simulation": "none: XNNPACK's arithmetic is not modelled"}


@hookimpl
def mqbench_register_runtimes(register: Registry[Runtime]) -> None:
    register(ExecuTorchXnnpack())


__all__ = ["ExecuTorchModel", "ExecuTorchXnnpack", "QuantizeDequantize", "duplicate_dequantize", "lower_to_xnnpack",
           "pt2e_module"]
