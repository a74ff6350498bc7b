"""``openvino``: OpenVINO's CPU plugin (oneDNN int8 kernels) running the QDQ ONNX model ``ort-qdq`` runs.

The QuantSim is exported exactly as for ONNX Runtime (:func:`~mqbench.backends.ort.export.export_qdq`: its
qparams, on-grid weights, int32 biases), and so is any toolkit's QDQ ONNX model (``onnx-qdq``). OpenVINO reads
the ONNX file, turns each QuantizeLinear/DequantizeLinear pair into a ``FakeQuantize``, and its low-precision
transformations move the dequantization past the convolutions, so they run on u8 x i8 oneDNN kernels
(``brgconv_avx512_I8`` ...) with the bias, the residual add and the next quantization fused as post-ops.

Precision is pinned: on AVX-512 machines OpenVINO runs float layers in bf16 unless told otherwise, so every
model here is compiled with ``INFERENCE_PRECISION_HINT=f32`` (the float row is float32, and what a QDQ model
leaves unquantized runs in float32), recorded with the cell. The record's ``deployment`` lists the executed
kernels of the compiled model (``get_runtime_model()``: layer type, primitive, runtime precision) and names the
arithmetic layers that ran in float (the leaderboard's ``float ops:``).

One compiled model per input shape (batch included: static shapes, the fast path of the CPU plugin), per
thread count (``INFERENCE_NUM_THREADS``, one stream, latency hint).

No integer simulation yet: the fake-quant simulation's agreement is reported (README, runtimes, for what is
known of OpenVINO's arithmetic: ``scripts/openvino_arithmetic.py``).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from mqbench import hookimpl
from mqbench.backends import FLOAT, ONNX_QDQ, QUANTSIM, Artifact, Deployed, Runtime, w8a8_problem
from mqbench.backends.ort.runtime import cpu_isa
from mqbench.quant.qsim import QuantSim
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme

PRECISION = "f32"  # INFERENCE_PRECISION_HINT: what OpenVINO runs the non-int8 layers in
# Layer types of the CPU plugin's runtime model that compute (not reshape, reorder or hold constants).
COMPUTE_LAYERS = frozenset({"Convolution", "FullyConnected", "MatMul", "Eltwise", "Pooling", "Reduce", "Subgraph",
                            "FakeQuantize", "Deconvolution", "Interpolate", "Softmax"})
FLOAT_PRECISIONS = frozenset({"f32", "bf16", "f16"})


def compile_onnx(proto: Any, batch_shape: tuple[int, ...], threads: int) -> Any:
    """``proto`` (an ``onnx.ModelProto``) compiled by OpenVINO's CPU plugin for inputs of ``batch_shape``."""
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        model = core.read_model(path)
    model.reshape({model.inputs[0].any_name: list(batch_shape)})
    return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": PRECISION, "INFERENCE_NUM_THREADS": threads,
                                             "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})


def executed_kernels(compiled: Any) -> dict[str, Any]:
    """What the compiled model runs: a count per ``layer type / primitive / precision``, how many compute layers
    ran on int8 kernels, and the compute layers that ran in float (by layer type; the names in ``float_layers``)."""
    kernels: Counter[str] = Counter()
    float_ops: Counter[str] = Counter()
    float_layers: list[str] = []
    integer = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer, primitive = info["layerType"].astype(str), info["primitiveType"].astype(str)
        precision = info["runtimePrecision"].astype(str)
        if layer in ("Const", "Input", "Output"):
            continue
        kernels[f"{layer}/{primitive}/{precision}"] += 1
        if layer in COMPUTE_LAYERS and not _quantizes(layer, op.get_friendly_name()):
            if precision in FLOAT_PRECISIONS:
                float_ops[layer] += 1
                float_layers.append(op.get_friendly_name())
            else:
                integer += 1
    return {"kernels": dict(sorted(kernels.items())), "integer_ops": integer,
            "float_compute_ops": dict(sorted(float_ops.items())), "float_layers": float_layers}


def _quantizes(layer: str, name: str) -> bool:
    """Whether a runtime layer is a quantization of float values (the model's input quantizer): float by nature."""
    return layer == "FakeQuantize" or name.endswith("QuantizeLinear")


class OpenVinoModel:
    """A deployed model: the ONNX model exported once per sample shape, compiled once per batch shape."""

    def __init__(self, build: Callable[[torch.Tensor], Any], threads: int) -> None:
        self.build, self.threads = build, threads
        self.models: dict[tuple[int, ...], Any] = {}  # ONNX per sample shape
        self.compiled: dict[tuple[int, ...], Any] = {}  # per batch shape
        self.kernels: dict[tuple[int, ...], dict[str, Any]] = {}  # per sample shape

    def _compiled(self, inputs: torch.Tensor) -> Any:
        shape = tuple(inputs.shape)
        if shape not in self.compiled:
            sample = shape[1:]
            if sample not in self.models:
                self.models[sample] = self.build(inputs[:1])
            self.compiled[shape] = compile_onnx(self.models[sample], shape, self.threads)
            if sample not in self.kernels:
                self.kernels[sample] = executed_kernels(self.compiled[shape])
        return self.compiled[shape]

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        compiled = self._compiled(inputs)
        out = compiled(inputs.detach().float().contiguous().numpy())[compiled.outputs[0]]
        return torch.from_numpy(out.copy())

    def with_threads(self, threads: int) -> OpenVinoModel:
        """The same exported models compiled for ``threads`` inference threads (for latency)."""
        if threads == self.threads:
            return self
        clone = OpenVinoModel(self.build, threads)
        clone.models, clone.kernels = self.models, self.kernels
        return clone

    def size_bytes(self) -> int:
        """The serialised ONNX model's size (what OpenVINO reads)."""
        if not self.models:
            raise RuntimeError("the ONNX model is exported on its first call: call it before asking its size")
        return next(iter(self.models.values())).ByteSize()

    def deployment_info(self) -> dict[str, Any]:
        """For each sample shape run: the kernels the compiled model executed (:func:`executed_kernels`)."""
        return {"x".join(map(str, key)): value for key, value in self.kernels.items()}


class OpenVinoCPU(Runtime):
    name = "openvino"
    description = "OpenVINO CPU plugin (oneDNN int8 kernels), the QuantSim's QDQ ONNX; f32 for what is not int8"
    formats = frozenset({FLOAT, QUANTSIM, ONNX_QDQ})
    packages: ClassVar[tuple[str, ...]] = ("openvino", "onnx")

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or len(os.sched_getaffinity(0))

    def unavailable(self) -> str | None:
        try:
            import onnx  # noqa: F401
            import openvino  # noqa: F401
        except ImportError as exc:
            return f"{exc.name} is not installed (pip install 'mqbench[openvino]')"
        return None

    def check_scheme(self, scheme: QuantScheme) -> str | None:
        problem = w8a8_problem(scheme, "OpenVINO's CPU int8 kernels")
        if problem:
            return problem
        if not scheme.weight_symmetric and scheme.weight_granularity == "channel":
            return "the QDQ export needs per-channel weight zero points of 0 (as for ONNX Runtime): drop -asym"
        return None

    def load(self, artifact: Artifact) -> Deployed:
        from mqbench.backends.ort.export import export_onnx, export_qdq

        if artifact.format == FLOAT:
            model = artifact.payload.eval()
            return OpenVinoModel(lambda example: export_onnx(model, example), self.threads)
        if artifact.format == QUANTSIM:
            qsim: QuantSim = artifact.payload
            return OpenVinoModel(lambda example: export_qdq(qsim, example), self.threads)
        if artifact.format == ONNX_QDQ:
            proto = artifact.payload
            return OpenVinoModel(lambda example: proto, self.threads)
        raise ValueError(f"{self.name} cannot load a {artifact.format} artifact")

    def info(self) -> dict[str, Any]:
        missing = self.unavailable()
        if missing:
            return {"runtime": None, "unavailable": missing}
        import openvino as ov

        core = ov.Core()
        return {"runtime": f"openvino {ov.get_version()}", "device": "CPU",
                "cpu": core.get_property("CPU", "FULL_DEVICE_NAME"), "inference_precision": PRECISION,
                "threads": self.threads, "isa": cpu_isa(), "format": "QDQ ONNX (ort-qdq's export)",
                "integer_simulation": "none: OpenVINO's arithmetic is not modelled (scripts/openvino_arithmetic.py)"}


@hookimpl
def mqbench_register_runtimes(register: Registry[Runtime]) -> None:
    register(OpenVinoCPU())


__all__ = ["OpenVinoCPU", "OpenVinoModel", "compile_onnx", "executed_kernels"]
