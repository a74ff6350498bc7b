"""``litert-xnnpack``: LiteRT's interpreter (the runtime of TensorFlow Lite models) with its default XNNPACK delegate,
what an Android app running a ``.tflite`` file uses.

The calibrated QuantSim is written as the PT2E graph ``convert_pt2e(..., fold_quantize=False)`` leaves with
XNNPACK's quantizer conventions (:func:`mqbench.backends.pt2e.pt2e_module` with ``LITERT``: the QuantSim's own
qparams and codes, int8 activations = uint8 code - 128, symmetric int8 weights as on-grid float weights before a
quantize/dequantize pair, the bias on its int32 grid, explicit pads), and converted by ``litert_torch.convert`` in
its static PT2E mode: the converter folds every q/dq pair into int8 TFLite operators (``CONV_2D``,
``DEPTHWISE_CONV_2D``, ``ADD``, ``MEAN``, ``FULLY_CONNECTED`` ...). The model's input and output are int8: the
input is quantized here with the QuantSim's input quantizer's qparams (read back from the model), the output
dequantized with the logits quantizer's.

The interpreter applies XNNPACK to every operator it supports. The record's ``deployment`` lists the operators
that ran after delegation (:func:`executed_ops`: the delegates and whatever the interpreter's own kernels ran
outside them), what the delegates took (by operator and operand type: ``CONV_2D int8``), and the compute operators
that ran on float operands anywhere (the leaderboard's ``float ops:``; the float model's are all of them).

One converted model per input shape (static shapes, batch included; ``litert_torch`` cannot convert the flatten
before the classifier with a dynamic batch), one interpreter per (shape, threads).

The cell's integer simulation is XNNPACK's arithmetic code for code (:class:`~mqbench.backends.xnnpack.
XnnpackSimulation`, x86-64).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends import FLOAT, QUANTSIM, Artifact, Deployed, Runtime
from mqbench.backends.ort.runtime import cpu_isa
from mqbench.backends.pt2e import LITERT, PT2E_LITERT, pt2e_module, quiet
from mqbench.backends.xnnpack import XnnpackSimulation, scheme_problem, simulation_unsupported
from mqbench.quant import functional as Q
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme

# TFLite operators that compute (not move, reshape or convert data).
COMPUTE_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "ADD", "SUB", "MUL",
                         "MEAN", "SUM", "AVERAGE_POOL_2D", "MAX_POOL_2D", "RELU", "RELU6", "RELU_N1_TO_1", "MINIMUM",
                         "MAXIMUM", "HARD_SWISH", "LOGISTIC", "TANH", "SOFTMAX", "TRANSPOSE_CONV"})
DELEGATE = "DELEGATE"


def convert(module: nn.Module, example: torch.Tensor, quantized: bool) -> bytes:
    """``module`` converted by ``litert_torch`` for inputs shaped as ``example``: a ``.tflite`` flatbuffer. A PT2E
    quantized graph is converted in static quantization mode (its q/dq pairs folded into int8 operators)."""
    with quiet():
        import litert_torch
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        config = None
        if quantized:  # the quantizer only tells the converter the graph holds static q/dq pairs; nothing is annotated
            config = QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(get_symmetric_quantization_config()))
        os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")  # its per-pass console lines; mqbench reports progress
        module.eval()  # not chained: an exported graph's eval() (allow_exported_model_train_eval) returns None
        return bytes(litert_torch.convert(module, (example,), quant_config=config).model_content())


def executed_ops(ops: list[dict[str, Any]], outputs: list[int]) -> list[dict[str, Any]]:
    """The nodes of ``ops`` (``Interpreter._get_ops_details()``) the interpreter executes: those that produce the
    graph's ``outputs`` and what they read, back to the inputs. A delegate node's outputs are the outputs of the
    nodes it replaced (still listed, never run), so a delegate is taken as their producer."""
    producer: dict[int, dict[str, Any]] = {}
    for op in sorted(ops, key=lambda o: o["op_name"] == DELEGATE):  # delegates last: they win
        producer.update((int(t), op) for t in op["outputs"])
    executed: dict[int, dict[str, Any]] = {}
    pending = list(outputs)
    while pending:
        node = producer.get(int(pending.pop()))
        if node is not None and node["index"] not in executed:
            executed[node["index"]] = node
            pending.extend(int(t) for t in node["inputs"] if t >= 0)
    return sorted(executed.values(), key=lambda o: o["index"])


def _typed(op: dict[str, Any]) -> str:
    """``CONV_2D int8``: an operator with the type of its first operand (the activation)."""
    types = op.get("operand_types") or [None]
    return f"{op['op_name']} {np.dtype(types[0]).name if types[0] is not None else '?'}"


def delegation(interpreter: Any) -> dict[str, Any]:
    """What ``interpreter`` runs: its delegates, what they took (operators by first operand type) and what ran
    outside them, and every compute operator on float operands (inside a delegate or not)."""
    ops = interpreter._get_ops_details()
    outputs = [int(d["index"]) for d in interpreter.get_output_details()]
    executed = executed_ops(ops, outputs)
    ran = {op["index"] for op in executed}
    delegates = [op for op in executed if op["op_name"] == DELEGATE]
    # Replaced nodes: listed, not run, and produced inside a delegate (nodes a delegate reads from are run).
    replaced = [op for op in ops if op["index"] not in ran and op["op_name"] != DELEGATE]
    outside = [op for op in executed if op["op_name"] != DELEGATE]
    float_ops = Counter(op["op_name"] for op in replaced + outside
                        if op["op_name"] in COMPUTE_OPS and _typed(op).endswith("float32"))
    return {"delegates": len(delegates),
            "delegated_ops": dict(sorted(Counter(_typed(op) for op in replaced).items())),
            "ops_outside_delegates": dict(sorted(Counter(_typed(op) for op in outside).items())),
            "float_compute_ops": dict(sorted(float_ops.items()))}


class LiteRtModel:
    """A deployed model: one ``.tflite`` per input shape, one interpreter per (shape, threads); int8 models are
    fed their input's codes and their output codes dequantized."""

    def __init__(self, module: nn.Module, quantized: bool, threads: int) -> None:
        self.module, self.quantized, self.threads = module, quantized, threads
        self.flatbuffers: dict[tuple[int, ...], bytes] = {}  # per input shape
        self.delegation: dict[tuple[int, ...], dict[str, Any]] = {}  # per sample shape
        self.interpreters: dict[tuple[int, ...], Any] = {}  # per input shape, at self.threads

    def interpreter(self, shape: tuple[int, ...]) -> Any:
        if shape not in self.interpreters:
            if shape not in self.flatbuffers:
                self.flatbuffers[shape] = convert(self.module, torch.zeros(shape), self.quantized)
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_content=self.flatbuffers[shape], num_threads=self.threads)
            interpreter.allocate_tensors()
            self.interpreters[shape] = interpreter
            self.delegation.setdefault(shape[1:], delegation(interpreter))
        return self.interpreters[shape]

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.detach().float().contiguous()
        interpreter = self.interpreter(tuple(inputs.shape))
        (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
        if given["dtype"] == np.int8:
            scale, zero_point = given["quantization"]
            inputs = Q.quantize(inputs, torch.tensor(scale), torch.tensor(zero_point), qmin=-128, qmax=127)
            inputs = inputs.to(torch.int8)
        interpreter.set_tensor(given["index"], inputs.numpy())
        interpreter.invoke()
        out = torch.from_numpy(interpreter.get_tensor(taken["index"]).copy())
        if taken["dtype"] == np.int8:
            scale, zero_point = taken["quantization"]
            out = Q.dequantize(out, torch.tensor(scale), torch.tensor(zero_point))
        return out

    def with_threads(self, threads: int) -> LiteRtModel:
        """The same ``.tflite`` models in interpreters with ``threads`` threads (for latency)."""
        if threads == self.threads:
            return self
        clone = LiteRtModel(self.module, self.quantized, threads)
        clone.flatbuffers, clone.delegation = self.flatbuffers, self.delegation
        return clone

    def size_bytes(self) -> int:
        """The ``.tflite`` file's size (what an app ships)."""
        if not self.flatbuffers:
            raise RuntimeError("the model is converted on its first call: call it before asking its size")
        return len(next(iter(self.flatbuffers.values())))

    def deployment_info(self) -> dict[str, Any]:
        """For each sample shape run: what XNNPACK's delegates took and what ran outside them (:func:`delegation`)."""
        return {"x".join(map(str, key)): value for key, value in self.delegation.items()}


class LiteRtXnnpack(Runtime):
    name = "litert-xnnpack"
    description = "LiteRT interpreter, XNNPACK delegate (int8 .tflite from litert-torch: int8 activations, symmetric weights)"
    formats = frozenset({FLOAT, QUANTSIM, PT2E_LITERT})
    packages: ClassVar[tuple[str, ...]] = ("ai-edge-litert", "litert-torch")

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or len(os.sched_getaffinity(0))

    def unavailable(self) -> str | None:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
            import litert_torch  # noqa: F401
        except ImportError as exc:
            return f"{exc.name} is not installed (pip install 'mqbench[litert]')"
        return None

    def check_scheme(self, scheme: QuantScheme) -> str | None:
        return scheme_problem(scheme, "LiteRT")

    def load(self, artifact: Artifact) -> Deployed:
        if artifact.format == FLOAT:
            return LiteRtModel(artifact.payload.eval(), False, self.threads)
        if artifact.format == QUANTSIM:
            return LiteRtModel(pt2e_module(artifact.payload, LITERT), True, self.threads)
        if artifact.format == PT2E_LITERT:  # the pt2e toolkit's graph, as its quantizer wrote it
            return LiteRtModel(artifact.payload, True, self.threads)
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

        return {"runtime": f"ai-edge-litert {version('ai-edge-litert')}", "converter": f"litert-torch {version('litert-torch')}",
                "delegate": "XNNPACK (the interpreter's default delegate)", "threads": self.threads, "isa": cpu_isa(),
                "format": "int8 .tflite (litert_torch static PT2E conversion), int8 input and output, static shapes",
                "integer_simulation": simulation_unsupported()
                or "XNNPACK x86-64 int8 kernels, the converter's int32 biases (mqbench.backends.xnnpack)"}


@hookimpl
def mqbench_register_runtimes(register: Registry[Runtime]) -> None:
    register(LiteRtXnnpack())


__all__ = ["LiteRtModel", "LiteRtXnnpack", "convert", "delegation", "executed_ops"]
