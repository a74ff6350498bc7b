"""``executorch-xnnpack``: ExecuTorch's runtime with the XNNPACK delegate, what a PyTorch model ships on to phones.

The calibrated QuantSim is written as the graph PyTorch's PT2E flow produces after ``convert_pt2e`` with
XNNPACK's conventions (:func:`mqbench.backends.pt2e.pt2e_module` with ``XNNPACK``), from the QuantSim's own qparams
and integer codes, nothing recalibrated: int8 asymmetric activations (the QuantSim's uint8 code minus 128, the
same real values), symmetric int8 weights per channel or per tensor, the bias on its int32 grid (XNNPACK's
lowering rounds it back to exactly those codes), explicit pads for TF "SAME" and ``padding="same"`` (executorch
issues 20517 and 20558), dequantize nodes copied per reader.

The graph is exported (``torch.export``, one static input shape), lowered with
``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` and run by ExecuTorch's runtime
(``executorch.runtime``). The record's ``deployment`` counts the operators inside XNNPACK delegates and names
any compute operator left outside them (run by ExecuTorch's portable kernels in float: the leaderboard's
``float ops:``). The thread count is that of ExecuTorch's shared threadpool, set before each call.

The cell's integer simulation is XNNPACK's arithmetic code for code (:class:`~mqbench.backends.xnnpack.
XnnpackSimulation`, x86-64).
"""

from __future__ import annotations

import operator
import os
from collections import Counter
from typing import Any, ClassVar

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends import FLOAT, QUANTSIM, Artifact, Deployed, Runtime
from mqbench.backends.ort.runtime import cpu_isa
from mqbench.backends.pt2e import PT2E_XNNPACK, XNNPACK, duplicate_dequantize, pt2e_module, quiet
from mqbench.backends.xnnpack import XnnpackSimulation, scheme_problem, simulation_unsupported
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme

# Operators that compute (not reshape or move data): one outside a delegate ran in float on portable kernels.
COMPUTE_OPS = frozenset({"convolution", "linear", "addmm", "mm", "add", "mul", "sub", "mean", "avg_pool2d",
                         "adaptive_avg_pool2d", "hardtanh", "relu", "clamp", "minimum", "maximum", "max_pool2d"})
QDQ_OPS = frozenset({"quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
                     "dequantize_per_channel"})


def _op_name(target: Any) -> str:
    """``aten.convolution.default`` -> ``convolution``."""
    parts = getattr(target, "__name__", str(target)).split(".")
    return parts[-2] if len(parts) >= 3 else parts[0]


def lower_to_xnnpack(module: nn.Module, example: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
    """``module`` exported for inputs shaped as ``example``, lowered to XNNPACK, serialised as an ExecuTorch
    program; with what was delegated: operator counts inside the delegates and compute operators left outside."""
    with quiet():
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
    formats = frozenset({FLOAT, QUANTSIM, PT2E_XNNPACK})
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
        return scheme_problem(scheme, "ExecuTorch")

    def load(self, artifact: Artifact) -> Deployed:
        if artifact.format == FLOAT:
            return ExecuTorchModel(artifact.payload.eval(), self.threads)
        if artifact.format == QUANTSIM:
            return ExecuTorchModel(pt2e_module(artifact.payload, XNNPACK), self.threads)
        if artifact.format == PT2E_XNNPACK:  # the pt2e toolkit's graph, as its quantizer wrote it
            return ExecuTorchModel(artifact.payload, self.threads)
        raise ValueError(f"{self.name} cannot load a {artifact.format} artifact")

    def integer_simulation(self, qsim: Any) -> Deployed | None:
        if simulation_unsupported() is not None:
            return None
        return XnnpackSimulation(qsim)

    def info(self) -> dict[str, Any]:
        missing = self.unavailable()
        if missing:
            return {"runtime": None, "unavailable": missing}
        from importlib.metadata import version

        return {"runtime": f"executorch {version('executorch')}", "delegate": "XnnpackPartitioner",
                "threads": self.threads, "isa": cpu_isa(),
                "format": "PT2E quantized graph (quantized_decomposed q/dq, int8 activations), static shapes",
                "integer_simulation": simulation_unsupported()
                or "XNNPACK x86-64 int8 kernels, the converter's int32 biases (mqbench.backends.xnnpack)"}


@hookimpl
def mqbench_register_runtimes(register: Registry[Runtime]) -> None:
    register(ExecuTorchXnnpack())


__all__ = ["ExecuTorchModel", "ExecuTorchXnnpack", "lower_to_xnnpack"]
