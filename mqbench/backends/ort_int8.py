"""``ort-qdq`` and ``ort-qoperator``: the QuantSim exported to ONNX (QDQ form, or QLinear operators) and
run by ONNX Runtime's CPU integer kernels.

Export (:func:`export_qdq`): the QuantSim in inference mode computes every fake-quantizer with
``torch.fake_quantize_per_{tensor,channel}_affine``, which torch's TorchScript ONNX exporter writes as
``QuantizeLinear -> DequantizeLinear`` pairs carrying the QuantSim's exact scales and zero points.
The graph is then finished the way ONNX Runtime's own quantizer writes it (``onnxruntime.quantization``,
QDQ format), so its graph optimizer can fuse each ``DQ -> op -> Q`` group into one integer kernel
(``QLinearConv``, ``QGemm``, ``QLinearAdd``, ``QLinearGlobalAveragePool``):

* weights are stored as int8 codes feeding a ``DequantizeLinear`` (computed with the QuantSim's own
  quantize function, so on-grid weights, AdaRound's for example, keep exactly their codes; nothing is
  recalibrated);
* biases are stored as int32 codes at scale ``input_scale * weight_scale`` (zero point 0), as integer
  runtimes accumulate them; the QuantSim keeps float biases, an error below half a unit of that
  accumulator scale;
* pass-through ops between a ``DequantizeLinear`` and the op it feeds (``Flatten`` before the
  classifier, the zero ``Pad`` of TensorFlow "SAME" padding) run on the integer tensor, the
  ``DequantizeLinear`` moved after them (a ``Pad`` then pads with the zero point, the image of 0).

``ort-qoperator`` (:func:`to_qoperator`) writes the same graph as QLinear operators: ONNX Runtime's graph
optimizer fuses each group (extended level) and the fused graph is saved and checked to hold only
QLinear operators between the input's ``QuantizeLinear`` and the logits' ``DequantizeLinear``; the
two backends run the same kernels, so they must agree exactly (a test checks it).

:func:`integer_op_summary` reads the graph ONNX Runtime actually optimised and counts the operators
that ran in float, so a record says whether the integer kernels were really used. The torch ONNX
exporter used is the TorchScript one (``dynamo=False``): the torch.export-based exporter is the
default since torch 2.9 but needs ``onnxscript``; the QDQ graph is the same.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends import Backend, Deployed
from mqbench.quant import functional as Q
from mqbench.quant import mlas
from mqbench.quant.integer_sim import IntegerSimulation
from mqbench.quant.qsim import Placement, QuantSim
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme

INTEGER_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "QLinearGlobalAveragePool",
                         "QLinearAveragePool", "QLinearConcat", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
                         "MatMulInteger", "ConvInteger"})
# Operators that do arithmetic: one of these left in float means the integer kernels were not used there.
COMPUTE_OPS = frozenset({"Conv", "Gemm", "MatMul", "Add", "GlobalAveragePool", "AveragePool", "Mul", "FusedConv",
                         "FusedGemm", "FusedMatMul"})
OPSET = 17
PASS_THROUGH_OPS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Pad"})


def export_onnx(module: nn.Module, example: torch.Tensor) -> Any:
    """``module`` as an ONNX ``ModelProto`` (input ``input``, output ``logits``, dynamic batch size)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(module, (example,), path, opset_version=OPSET, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        return onnx.load(path)


def export_qdq(qsim: QuantSim, example: torch.Tensor) -> Any:
    """The calibrated ``qsim`` as a QDQ ONNX model with int8 weights and int32 biases (module docstring)."""
    was_training = qsim.training
    qsim.eval()
    try:
        model = export_onnx(qsim, example)
    finally:
        qsim.train(was_training)
    graph = _Graph(model)
    graph.store_weights_as_codes()
    graph.move_dequantize_past_pass_through_ops()  # first, so a padded conv's bias finds its input's scale
    graph.quantize_biases()
    graph.clip_channels_on_codes()
    graph.finish()
    return model


class _Graph:
    """In-place rewrites of an exported QDQ graph."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        for node in self.graph.node:  # the exporter shares equal constants through Identity nodes
            if node.op_type == "Identity" and node.input[0] in self.consts:
                self.consts[node.output[0]] = self.consts[node.input[0]]
        self.dropped: set[str] = set()  # output names of removed nodes
        self.new_inits: dict[str, np.ndarray] = {}

    def producer(self, name: str) -> Any:
        for node in self.graph.node:
            if name in node.output and node.output[0] not in self.dropped:
                return node
        return None

    def consumers(self, name: str) -> list[Any]:
        return [n for n in self.graph.node if name in n.input and n.output[0] not in self.dropped]

    def const(self, name: str) -> np.ndarray | None:
        return self.new_inits.get(name, self.consts.get(name))

    def add_init(self, name: str, array: np.ndarray) -> str:
        self.new_inits[name] = array
        return name

    def store_weights_as_codes(self) -> None:
        """``W (float) -> QuantizeLinear -> DQ`` becomes ``codes (int8) -> DQ``."""
        for node in list(self.graph.node):
            if node.op_type != "QuantizeLinear":
                continue
            weight = self.const(node.input[0])
            if weight is None:
                continue
            scale, zero = self.const(node.input[1]), self.const(node.input[2])
            assert scale is not None and zero is not None
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.ndim == 1 else None
            info = np.iinfo(zero.dtype)
            codes = Q.quantize(torch.tensor(weight), torch.tensor(scale), torch.tensor(zero.astype(np.int64)),
                               qmin=int(info.min), qmax=int(info.max), axis=axis)
            name = self.add_init(node.input[0] + "_quantized", codes.numpy().astype(zero.dtype))
            for user in self.consumers(node.output[0]):
                user.input[0] = name
            self.dropped.add(node.output[0])

    def _dq_scale(self, name: str) -> np.ndarray | None:
        node = self.producer(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        return self.const(node.input[1])

    def quantize_biases(self) -> None:
        """A float bias of a Conv or Gemm fed by two DQ nodes becomes ``int32 codes -> DQ``."""
        from onnx import helper

        for node in list(self.graph.node):
            if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
                continue
            bias = self.const(node.input[2])
            x_scale, w_scale = self._dq_scale(node.input[0]), self._dq_scale(node.input[1])
            if bias is None or x_scale is None or w_scale is None:
                continue
            scale = (x_scale.astype(np.float32) * w_scale.astype(np.float32)).astype(np.float32)
            scale = np.broadcast_to(scale, bias.shape).astype(np.float32) if scale.ndim else scale
            codes = np.clip(np.round(bias.astype(np.float64) / scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
            base = f"{node.name or node.output[0]}_bias"
            inputs = [self.add_init(base + "_quantized", codes), self.add_init(base + "_scale", scale),
                      self.add_init(base + "_zero_point", np.zeros(scale.shape, np.int32))]
            dq = helper.make_node("DequantizeLinear", inputs, [base + "_dequantized"], name=base + "_DequantizeLinear")
            if scale.ndim:
                dq.attribute.append(helper.make_attribute("axis", 0))
            self.graph.node.append(dq)
            node.input[2] = base + "_dequantized"

    def move_dequantize_past_pass_through_ops(self) -> None:
        """``DQ -> Flatten/Reshape/Pad -> op`` becomes ``Flatten/Reshape/Pad -> DQ -> op`` (per-tensor DQ), so
        the pass-through op runs on the integer tensor and ``op`` sees a DQ input it can fuse with. A zero
        ``Pad`` (TensorFlow "SAME" padding) then pads with the zero point, the integer image of 0."""
        for node in list(self.graph.node):
            if node.op_type not in PASS_THROUGH_OPS or node.output[0] in self.dropped:
                continue
            dq = self.producer(node.input[0])
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            scale, zero = self.const(dq.input[1]), self.const(dq.input[2])
            if scale is None or zero is None or scale.ndim != 0:
                continue
            if len(self.consumers(dq.output[0])) > 1:  # a tensor also read elsewhere (a residual): own DQ copy
                from onnx import helper

                copy = helper.make_node("DequantizeLinear", list(dq.input), [node.output[0] + "_dq_input"],
                                        name=f"{dq.name}_for_{node.name or node.output[0]}")
                self.graph.node.append(copy)  # protobuf appends a copy: edit the graph's own node below
                node.input[0], dq = copy.output[0], self.graph.node[-1]
            if node.op_type == "Pad":
                mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
                value = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
                if mode != "constant" or value is None or float(np.asarray(value).reshape(-1)[0]) != 0.0:
                    continue
                pad_value = self.add_init(node.output[0] + "_zero_point", zero.reshape(()).copy())
                while len(node.input) < 3:
                    node.input.append("")
                node.input[2] = pad_value
            integer, out = dq.input[0], node.output[0]
            node.input[0], node.output[0] = integer, out + "_quantized"
            dq.input[0], dq.output[0] = out + "_quantized", out

    def clip_channels_on_codes(self) -> None:
        """``Relu -> Min(x, per-channel bound) -> Q`` (ReLU6 after cross-layer equalization) becomes
        ``Relu -> Q -> Min(codes, bound codes)``: ONNX Runtime cannot fuse a per-channel clip into QLinearConv
        and would run the convolution in float; on codes the clip is exact, since rounding is monotone
        (``Q(min(x, u)) = min(Q(x), Q(u))``), and ``Min`` runs on uint8."""
        from onnx import helper

        for q in list(self.graph.node):
            if q.op_type != "QuantizeLinear":
                continue
            node = self.producer(q.input[0])
            if node is None or node.op_type != "Min" or len(node.input) != 2 or len(self.consumers(node.output[0])) != 1:
                continue
            bounds = [self.const(name) for name in node.input]
            if (bounds[0] is None) == (bounds[1] is None):
                continue
            bound, dynamic = (bounds[1], node.input[0]) if bounds[0] is None else (bounds[0], node.input[1])
            scale, zero = self.const(q.input[1]), self.const(q.input[2])
            if scale is None or zero is None or scale.ndim != 0 or bound is None:
                continue
            info = np.iinfo(zero.dtype)
            codes = np.clip(np.round(bound.astype(np.float32) / scale.astype(np.float32)) + int(zero), info.min, info.max)
            out = q.output[0]
            q.input[0], q.output[0] = dynamic, out + "_unclipped"
            name = self.add_init(node.output[0] + "_codes", codes.astype(zero.dtype))
            self.graph.node.append(helper.make_node("Min", [out + "_unclipped", name], [out], name=node.name + "_codes"))
            self.dropped.add(node.output[0])

    def finish(self) -> None:
        from onnx import numpy_helper

        kept = [n for n in self.graph.node if n.output[0] not in self.dropped]
        del self.graph.node[:]
        self.graph.node.extend(kept)
        for name, array in self.new_inits.items():
            self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        while True:  # constants (and Identity copies of them) nothing reads any more
            outputs = {o.name for o in self.graph.output}
            used = {name for node in self.graph.node for name in node.input} | outputs
            dead = [n for n in self.graph.node if n.op_type in ("Constant", "Identity") and n.output[0] not in used]
            if not dead:
                break
            for n in dead:
                self.graph.node.remove(n)
        for init in [i for i in self.graph.initializer if i.name not in used]:
            self.graph.initializer.remove(init)
        _topological_sort(self.graph)


QOPERATOR_BOUNDARY = {"QuantizeLinear": 1, "DequantizeLinear": 1}  # the input's Q and the logits' DQ


def to_qoperator(qdq_model: Any) -> Any:
    """The QDQ model in QOperator form: every ``DQ -> op -> Q`` group one QLinear operator (``QLinearConv``,
    ``QLinearAdd``, ``QGemm``, ``QLinearGlobalAveragePool``) with the same scales, zero points and integer
    weights and biases, as ONNX Runtime's own graph optimizer fuses them (extended level, saved before the
    CPU-specific layout changes). Raises ValueError naming any operator that was not turned into a QLinear
    one (a float operator or a Q/DQ pair left inside the graph)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "qoperator.onnx")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = path
        options.log_severity_level = 3
        ort.InferenceSession(qdq_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        model = onnx.load(path)
    ops = Counter(node.op_type for node in model.graph.node)
    left = {op: n for op, n in ops.items() if op in COMPUTE_OPS or n > QOPERATOR_BOUNDARY.get(op, n)}
    if left:
        nodes = sorted((n for n in model.graph.node if n.op_type in left), key=lambda n: n.op_type not in COMPUTE_OPS)
        names = [f"{node.op_type} {node.name}".strip() for node in nodes][:5]  # float arithmetic first
        raise ValueError(f"the QDQ graph has operators ONNX Runtime could not turn into QLinear operators: "
                         f"{', '.join(names)}")
    return model


def _topological_sort(graph: Any) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes, ordered = list(graph.node), []
    while nodes:
        ready = [n for n in nodes if all(i in available for i in n.input)]
        if not ready:
            raise ValueError(f"the exported graph has a cycle or a missing input near {nodes[0].op_type} {nodes[0].name}")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        nodes = [n for n in nodes if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def make_session(model: Any, threads: int, optimized_path: str | None = None) -> Any:
    """An ONNX Runtime CPU session with all graph optimizations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: not the notice about serialising an optimised graph
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def integer_op_summary(model: Any, threads: int = 1) -> dict[str, Any]:
    """The operator types of the graph ONNX Runtime runs after optimising ``model``, and which arithmetic
    operators were left in float (none, when every group was fused into an integer kernel)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        make_session(model, threads, path)
        optimized = onnx.load(path)
    ops = Counter(node.op_type for node in optimized.graph.node)
    float_ops = {op: n for op, n in sorted(ops.items()) if op in COMPUTE_OPS}
    return {"ops": dict(sorted(ops.items())), "float_compute_ops": float_ops,
            "integer_ops": sum(n for op, n in ops.items() if op in INTEGER_OPS)}


class OnnxModel:
    """A deployed ONNX model: exported for each input shape on first use, then run by ONNX Runtime."""

    def __init__(self, build: Callable[[torch.Tensor], Any], threads: int) -> None:
        self.build, self.threads = build, threads
        self.sessions: dict[tuple[int, ...], Any] = {}
        self.models: dict[tuple[int, ...], Any] = {}

    def session(self, example: torch.Tensor) -> Any:
        key = tuple(example.shape[1:])
        if key not in self.sessions:
            self.models[key] = self.build(example[:1])
            self.sessions[key] = make_session(self.models[key], self.threads)
        return self.sessions[key]

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        session = self.session(inputs)
        out = session.run(None, {"input": inputs.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def with_threads(self, threads: int) -> OnnxModel:
        """The same exported models in sessions with ``threads`` intra-op threads (for latency)."""
        clone = OnnxModel(self.build, threads)
        clone.models = self.models
        return clone

    def size_bytes(self) -> int:
        """The serialised ONNX model's size (the first input shape exported)."""
        if not self.models:
            raise RuntimeError("the ONNX model is exported on its first call: call it before asking its size")
        return next(iter(self.models.values())).ByteSize()

    def deployment_info(self) -> dict[str, Any]:
        """For each input shape exported: the operators ONNX Runtime ran after optimisation."""
        return {"x".join(map(str, key)): integer_op_summary(model, self.threads) for key, model in self.models.items()}


def cpu_isa() -> list[str]:
    """The x86 vector extensions ONNX Runtime's int8 kernels dispatch on, from ``/proc/cpuinfo``."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(set(flags) & {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"})


class OnnxRuntimeBackend(Backend):
    """What every ONNX Runtime backend shares: the CPU provider with a fixed thread count, the float model on
    the same runtime, and the runtime facts recorded with each cell."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or len(os.sched_getaffinity(0))

    def unavailable(self) -> str | None:
        return _missing_runtime()

    def deploy_float(self, model: nn.Module) -> Deployed:
        return OnnxModel(lambda example: export_onnx(model.eval(), example), self.threads)

    def info(self) -> dict[str, Any]:
        missing = _missing_runtime()
        if missing:
            return {"runtime": None, "unavailable": missing}
        import onnxruntime as ort

        return {"runtime": f"onnxruntime {ort.__version__}", "provider": "CPUExecutionProvider",
                "threads": self.threads, "isa": cpu_isa(), "opset": OPSET}


class OrtQDQ(OnnxRuntimeBackend):
    name = "ort-qdq"
    description = "ONNX Runtime CPU int8 kernels, the QuantSim exported as QDQ ONNX with its exact qparams"

    def check_scheme(self, scheme: QuantScheme) -> str | None:
        if scheme.weight_bits != 8 or scheme.act_bits != 8 or scheme.first_last_bits is not None:
            return "ONNX Runtime's integer kernels take 8-bit weights and 8-bit activations (a w8a8 scheme)"
        if not scheme.weight_symmetric and scheme.weight_granularity == "channel":
            return "ONNX Runtime's QLinearConv needs per-channel weight zero points of 0: drop -asym"
        return None

    def prepare(self, model: nn.Module, scheme: QuantScheme) -> QuantSim:
        return QuantSim.from_float(model, scheme, Placement())

    def convert(self, qsim: QuantSim) -> Deployed:
        return OnnxModel(lambda example: export_qdq(qsim, example), self.threads)

    def integer_simulation(self, qsim: QuantSim) -> Deployed | None:
        if mlas.supported_isa(cpu_isa()) is not None:
            return None
        return IntegerSimulation(qsim)

    def info(self) -> dict[str, Any]:
        info = {**super().info(), "format": "QDQ"}
        if info.get("runtime"):
            why_not = mlas.supported_isa(cpu_isa())
            info["integer_simulation"] = why_not or "ONNX Runtime MLAS x86-64 AVX2 kernels (mqbench.quant.mlas)"
        return info


class OrtQOperator(OrtQDQ):
    name = "ort-qoperator"
    description = "ONNX Runtime CPU int8 kernels, the QuantSim exported as QLinear operators (QOperator format)"

    def convert(self, qsim: QuantSim) -> Deployed:
        return OnnxModel(lambda example: to_qoperator(export_qdq(qsim, example)), self.threads)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "format": "QOperator"}


def _missing_runtime() -> str | None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install {exc.name})"
    return None


@hookimpl
def mqbench_register_backends(register: Registry[Backend]) -> None:
    register(OrtQDQ())
    register(OrtQOperator())


__all__ = ["OnnxModel", "OnnxRuntimeBackend", "OrtQDQ", "OrtQOperator", "cpu_isa", "export_onnx", "export_qdq",
           "integer_op_summary", "make_session", "to_qoperator"]
