"""``ort-qdq``, ``ort-qdq-s8s8`` and ``ort-qoperator``: ONNX Runtime's CPU integer kernels.

Each runs the artifacts of the formats it lists: the float model (exported to ONNX, the fp32 row), a
calibrated QuantSim (exported by :mod:`mqbench.backends.ort.export` with its exact qparams: QDQ form for
``ort-qdq``, QLinear operators for ``ort-qoperator``; the two run the same kernels, so they must agree
exactly, and a test checks it), and, on ``ort-qdq``, any QDQ ONNX model a toolkit wrote (``onnx-qdq``:
ONNX Runtime's own ``quantize_static``, later NNCF, AIMET, Brevitas).

:func:`integer_op_summary` reads the graph ONNX Runtime actually optimised and counts the operators that
ran in float, so a record says whether the integer kernels were really used (the leaderboard's
``float ops:`` note). :meth:`OrtQDQ.integer_simulation` is :class:`~mqbench.backends.ort.integer_sim.
IntegerSimulation`, ONNX Runtime's MLAS arithmetic code for code, where this CPU's kernels are modelled.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from mqbench import hookimpl
from mqbench.backends import FLOAT, ONNX_QDQ, QUANTSIM, Artifact, Deployed, Runtime, w8a8_problem
from mqbench.backends.ort import mlas
from mqbench.backends.ort.export import (
    COMPUTE_OPS,
    INTEGER_OPS,
    OPSET,
    export_onnx,
    export_qdq,
    signed_activations,
    to_qoperator,
)
from mqbench.backends.ort.integer_sim import IntegerSimulation
from mqbench.quant.qsim import QuantSim
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme


def make_session(model: Any, threads: int, optimized_path: str | None = None,
                 config: Mapping[str, str] | None = None) -> Any:
    """An ONNX Runtime CPU session with all graph optimizations, ``threads`` intra-op threads and the session
    ``config`` entries given (``session.qdqisint8allowed`` for S8S8)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: not the notice about serialising an optimised graph
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class QdqReference:
    """A QDQ ONNX model run as its operators say, nothing fused: ONNX Runtime with graph optimizations off, so each
    ``QuantizeLinear``/``DequantizeLinear`` is computed as written and every other operator in float32. What the
    file means (its fake-quant simulation), the ``sim`` of a toolkit row whose output is QDQ ONNX."""

    def __init__(self, proto: Any, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.log_severity_level = 3
        self.session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: inputs.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def session_and_summary(model: Any, threads: int,
                        config: Mapping[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    """A session (:func:`make_session`) and :func:`op_summary` of the graph it optimised and runs."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        session = make_session(model, threads, path, config)
        return session, op_summary(onnx.load(path))


def integer_op_summary(model: Any, threads: int = 1, config: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The operator types of the graph ONNX Runtime runs after optimising ``model``, and which arithmetic
    operators were left in float (none, when every group was fused into an integer kernel)."""
    return session_and_summary(model, threads, config)[1]


def op_summary(optimized: Any) -> dict[str, Any]:
    """:func:`integer_op_summary` of a graph ONNX Runtime optimised (an ``onnx.ModelProto``)."""
    ops = Counter(node.op_type for node in optimized.graph.node)
    float_ops = {op: n for op, n in sorted(ops.items()) if op in COMPUTE_OPS}
    return {"ops": dict(sorted(ops.items())), "float_compute_ops": float_ops,
            "integer_ops": sum(n for op, n in ops.items() if op in INTEGER_OPS)}


class OnnxModel:
    """A deployed ONNX model: exported for each input shape on first use, then run by ONNX Runtime."""

    def __init__(self, build: Callable[[torch.Tensor], Any], threads: int,
                 config: Mapping[str, str] | None = None) -> None:
        self.build, self.threads, self.config = build, threads, dict(config or {})
        self.sessions: dict[tuple[int, ...], Any] = {}
        self.models: dict[tuple[int, ...], Any] = {}
        self.summaries: dict[tuple[int, ...], dict[str, Any]] = {}  # of the graphs the sessions optimised

    def session(self, example: torch.Tensor) -> Any:
        key = tuple(example.shape[1:])
        if key not in self.sessions:
            if key not in self.models:
                self.models[key] = self.build(example[:1])
            self.sessions[key], self.summaries[key] = session_and_summary(self.models[key], self.threads, self.config)
        return self.sessions[key]

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        session = self.session(inputs)
        out = session.run(None, {"input": inputs.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def with_threads(self, threads: int) -> OnnxModel:
        """The same exported models in sessions with ``threads`` intra-op threads (for latency): this model when it
        already has that many."""
        if threads == self.threads:
            return self
        clone = OnnxModel(self.build, threads, self.config)
        clone.models = self.models
        return clone

    def size_bytes(self) -> int:
        """The serialised ONNX model's size (the first input shape exported)."""
        if not self.models:
            raise RuntimeError("the ONNX model is exported on its first call: call it before asking its size")
        return next(iter(self.models.values())).ByteSize()

    def deployment_info(self) -> dict[str, Any]:
        """For each input shape exported: the operators ONNX Runtime ran after optimisation."""
        return {"x".join(map(str, key)): self.summaries[key] if key in self.summaries else
                integer_op_summary(model, self.threads, self.config) for key, model in self.models.items()}


def cpu_isa() -> list[str]:
    """The x86 vector extensions ONNX Runtime's int8 kernels dispatch on, from ``/proc/cpuinfo``."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(set(flags) & {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"})


class OnnxRuntime(Runtime):
    """What every ONNX Runtime runtime shares: the CPU provider with a fixed thread count, the float model on
    the same runtime, and the runtime facts recorded with each cell."""

    packages = ("onnxruntime",)
    session_config: ClassVar[Mapping[str, str]] = {}  # ONNX Runtime session options of every model it runs

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or len(os.sched_getaffinity(0))

    def unavailable(self) -> str | None:
        return _missing_runtime()

    def check_scheme(self, scheme: QuantScheme) -> str | None:
        problem = w8a8_problem(scheme, "ONNX Runtime's integer kernels")
        if problem:
            return problem
        if not scheme.weight_symmetric and scheme.weight_granularity == "channel":
            return "ONNX Runtime's QLinearConv needs per-channel weight zero points of 0: drop -asym"
        return None

    def load(self, artifact: Artifact) -> Deployed:
        if artifact.format == FLOAT:
            model = artifact.payload.eval()
            return OnnxModel(lambda example: export_onnx(model, example), self.threads)
        if artifact.format == QUANTSIM:
            return self.load_quantsim(artifact.payload)
        if artifact.format == ONNX_QDQ:
            proto = artifact.payload
            return OnnxModel(lambda example: proto, self.threads, self.session_config)  # built already, dynamic batch
        raise ValueError(f"{self.name} cannot load a {artifact.format} artifact")

    def load_quantsim(self, qsim: QuantSim) -> Deployed:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        missing = _missing_runtime()
        if missing:
            return {"runtime": None, "unavailable": missing}
        import onnxruntime as ort

        return {"runtime": f"onnxruntime {ort.__version__}", "provider": "CPUExecutionProvider",
                "threads": self.threads, "isa": cpu_isa(), "opset": OPSET}


class OrtQDQ(OnnxRuntime):
    name = "ort-qdq"
    description = "ONNX Runtime CPU int8 kernels, the QuantSim exported as QDQ ONNX with its exact qparams"
    formats = frozenset({FLOAT, QUANTSIM, ONNX_QDQ})
    activation_type = "uint8"  # of the QuantSim's export (a toolkit's QDQ model keeps its own types)

    def load_quantsim(self, qsim: QuantSim) -> Deployed:
        return OnnxModel(lambda example: export_qdq(qsim, example), self.threads)

    def integer_simulation(self, qsim: Any) -> Deployed | None:
        if mlas.supported_isa(cpu_isa()) is not None:
            return None
        return IntegerSimulation(qsim)

    def info(self) -> dict[str, Any]:
        info = {**super().info(), "format": "QDQ", "activation_type": self.activation_type, "weight_type": "int8"}
        if info.get("runtime"):
            why_not = mlas.supported_isa(cpu_isa())
            pairs = ", U8S8 pairs of products saturated in int16 (no VNNI)" if mlas.sums_pairs_in_int16(cpu_isa()) else ""
            info["integer_simulation"] = why_not or f"ONNX Runtime MLAS x86-64 AVX2 kernels{pairs} (mqbench.backends.ort.mlas)"
        return info


class OrtQDQS8S8(OrtQDQ):
    """``ort-qdq`` with the activations held as int8 (S8S8 kernels) instead of uint8 (U8S8): the same QuantSim and
    real values (:func:`~mqbench.backends.ort.export.signed_activations`), ONNX Runtime's S8S8 kernels.

    On x86 ONNX Runtime does not run int8 activations as they are by default: ``QDQS8ToU8Transformer``
    (``qdq_s8_to_u8.cc``) turns an int8 Q/DQ pair into uint8 only where the Q node has one consumer, and the Conv and
    Add selectors refuse the int8 groups left (residual branches, TF-SAME pads), which then run in float (MobileNetV2:
    24 Conv, 10 Add and the classifier). This runtime sets ``session.qdqisint8allowed=1``, so every group runs in
    the S8S8 kernels; records name the option. ONNX Runtime's own ``quantize_static`` defaults to S8S8 since 1.32;
    ``ort-qdq`` keeps U8S8, measured faster on this machine (README, runtimes)."""

    name = "ort-qdq-s8s8"
    description = "ONNX Runtime CPU int8 kernels, QDQ ONNX with int8 activations (S8S8, session.qdqisint8allowed=1)"
    formats = frozenset({FLOAT, QUANTSIM, ONNX_QDQ})  # a toolkit's QDQ model runs with int8 groups allowed too
    activation_type = "int8"
    session_config: ClassVar[Mapping[str, str]] = {"session.qdqisint8allowed": "1"}

    def load_quantsim(self, qsim: QuantSim) -> Deployed:
        return OnnxModel(lambda example: signed_activations(export_qdq(qsim, example)), self.threads,
                         self.session_config)

    def integer_simulation(self, qsim: Any) -> Deployed | None:
        if mlas.supported_isa(cpu_isa()) is not None:
            return None
        return IntegerSimulation(qsim, signed_activations=True)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "session_config": dict(self.session_config)}


class OrtQOperator(OrtQDQ):
    name = "ort-qoperator"
    description = "ONNX Runtime CPU int8 kernels, the QuantSim exported as QLinear operators (QOperator format)"
    formats = frozenset({FLOAT, QUANTSIM})

    def load_quantsim(self, qsim: QuantSim) -> Deployed:
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
def mqbench_register_runtimes(register: Registry[Runtime]) -> None:
    register(OrtQDQ())
    register(OrtQDQS8S8())
    register(OrtQOperator())


__all__ = ["OnnxModel", "OnnxRuntime", "OrtQDQ", "OrtQDQS8S8", "OrtQOperator", "cpu_isa", "integer_op_summary", "make_session"]
