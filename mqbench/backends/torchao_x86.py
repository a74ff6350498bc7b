"""``torchao-x86``: torchao's PT2E path on x86, ``torch.compile`` (Inductor) lowering the quantized graph to oneDNN's
int8 kernels: the successor of the ``torch-x86`` / ``torch-fbgemm`` engines, which ``torch.ao.quantization``'s
deprecation retires.

The calibrated QuantSim is written as the graph ``convert_pt2e`` leaves with the X86 Inductor quantizer's
conventions (:func:`mqbench.backends.pt2e.pt2e_module` with ``X86_INDUCTOR``), from its own qparams and codes,
nothing recalibrated: uint8 asymmetric activations, int8 symmetric weights per channel (the quantizer annotates no
per-tensor weights: a per-tensor scale is written once per channel, the same arithmetic), the bias as the QuantSim's
int32 codes times ``input_scale * weight_scale`` in float (oneDNN adds a float bias to the scaled accumulator).

The graph is exported (``torch.export``, one static input shape) and compiled with ``torch.compile(dynamic=False)``
under Inductor's ``freezing`` (weights become constants, so its quantization passes can prepack them); torchao's
X86 Inductor quantizer module is imported first, which registers those int8 fusion passes (without the import
every convolution runs dequantized in float: pytorch/ao issue 4823). One compiled graph per input shape and
thread count, compiled and always called under ``torch.inference_mode`` (Dynamo guards on the thread count and the
grad mode, and a recompile would run without freezing, dequantized in float): a cell compiles its
evaluation's batch and last, smaller batch, and each latency setting's (batch, threads); never padded, so no timing
runs a larger batch than it reports.

The record's ``deployment`` says, from the code Inductor generated: the oneDNN int8 operators called
(``onednn.qconv_pointwise``, ``onednn.qlinear_pointwise``), any float convolution or matrix product left outside
them (``float_compute_ops``: the leaderboard's ``float ops:``, a fusion that did not match), Inductor's own C++
kernels by what they fuse (residual adds and the pool run there as ``dequantize -> float op -> quantize``), and
each shape's compile seconds, separate from the latency figures. Threads are torch's (``torch.set_num_threads``,
which sizes OpenMP's pool for the generated kernels and oneDNN alike).

The integer simulation (:func:`onednn_simulation`, the cell's ``integer sim``) computes the graph in oneDNN's own
arithmetic, read off its outputs layer by layer (``scripts/onednn_layers.py``): int32 accumulation, ``(acc * s_x) *
s_w + bias`` in float32, the fused ReLU / ReLU6, then ``round(v * (1 / s_y) + z_y)`` with the zero point added before
rounding; Inductor's kernels for adds, pads and the pool as the PT2E graph computes them. Checked on AVX-512 VNNI
CPUs; elsewhere the record says why there is none.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import time
from collections import Counter
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import fx, nn

from mqbench import hookimpl
from mqbench.backends import FLOAT, QUANTSIM, Artifact, Deployed, Runtime, w8a8_problem
from mqbench.backends.ort.runtime import cpu_isa
from mqbench.backends.pt2e import (
    PT2E_X86_INDUCTOR,
    X86_INDUCTOR,
    DequantizedWeightLayer,
    Pt2eChannelClip,
    Pt2eConv2d,
    QuantizeDequantize,
    duplicate_dequantize,
    pt2e_module,
    quiet,
)
from mqbench.layers import tf_same_pad
from mqbench.quant.qsim import QuantSim
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme

INT8_OPS = frozenset({"qconv_pointwise", "qconv2d_pointwise", "qconv_pointwise.binary", "qconv2d_pointwise.binary",
                      "qlinear_pointwise", "qlinear_pointwise.binary"})
# Float convolutions and matrix products Inductor can call: in a quantized graph, a fusion that did not match.
FLOAT_OPS = frozenset({"_convolution_pointwise", "convolution", "mm", "addmm", "bmm", "_linear_pointwise",
                       "_mkl_linear", "_convolution_transpose_pointwise"})
_EXTERN_CALL = re.compile(r"\b(?:torch\.ops\.\w+|extern_kernels)\.(\w+)(?:\.(\w+))?\(")
_CPP_CALL = re.compile(r"^\s*cpp_fused_(\w+?)_\d+\(", re.MULTILINE)


def kernels_called(code: str) -> dict[str, Any]:
    """What the Inductor-generated ``code`` (its Python wrapper) runs: oneDNN int8 operators, float convolutions or
    matrix products, and Inductor's C++ kernels by what they fuse (``add_dequantize_per_tensor_quantize_per_tensor``).
    """
    body = code[code.index("def call("):] if "def call(" in code else code
    int8: Counter[str] = Counter()
    float_ops: Counter[str] = Counter()
    for op, overload in _EXTERN_CALL.findall(body):
        qualified = f"{op}.binary" if overload == "binary" else op
        if qualified in INT8_OPS:
            int8[qualified] += 1
        elif op in FLOAT_OPS:
            float_ops[op] += 1
    cpp = Counter(_CPP_CALL.findall(body))
    return {"int8_ops": dict(sorted(int8.items())), "float_compute_ops": dict(sorted(float_ops.items())),
            "inductor_cpp_kernels": dict(sorted(cpp.items()))}


def compile_for_shape(module: nn.Module, example: torch.Tensor) -> tuple[Any, str, float]:
    """``module`` exported for inputs shaped as ``example`` and compiled by Inductor with freezing; the compiled
    callable, the generated code and the seconds the compile took (export included). The code is caught as Inductor
    saves it (not with ``torch._inductor.utils.run_and_get_code``, which resets Dynamo and so throws away every graph
    compiled before: they would recompile on their next call, without freezing, in float)."""
    from unittest import mock

    from torch._inductor import config as inductor_config
    from torch._inductor.graph import GraphLowering

    codes: list[str] = []
    start = time.perf_counter()
    with quiet():
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  registers the int8 fusions

        exported = torch.export.export(module, (example,))
        duplicate_dequantize(exported.graph_module)
        compiled = torch.compile(exported.module(), dynamic=False)
        # fx_graph_cache off: a cached graph would hand back no generated code to read the kernels from
        with inductor_config.patch(freezing=True, fx_graph_cache=False), torch.inference_mode(), \
                mock.patch.object(GraphLowering, "save_output_code", codes.append):
            compiled(example)
    return compiled, "\n".join(codes), time.perf_counter() - start


def _shape_key(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


class InductorModel:
    """A deployed model: one compiled graph per input shape and thread count (module docstring), compiled on its first
    call; what each runs and what it cost to compile."""

    def __init__(self, module: nn.Module, quantized: bool) -> None:
        self.module, self.quantized = module, quantized
        self.compiled: dict[tuple[int, tuple[int, ...]], Any] = {}  # per (threads, input shape)
        self.compile_s: dict[tuple[int, tuple[int, ...]], float] = {}
        self.info: dict[tuple[int, ...], dict[str, Any]] = {}  # per sample shape

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        # Always under inference mode on inference tensors, as compiled: Dynamo guards on the grad mode and on the
        # input's dispatch keys too, and a recompile would run without freezing, dequantized in float (measured: an
        # evaluation under no_grad then timing under inference_mode recompiled every graph, 2x slower)
        with torch.inference_mode():
            if not inputs.is_inference():
                inputs = inputs.clone()  # the copy a caller's ordinary tensor costs (0.6 MB at batch 1)
            inputs = inputs.float().contiguous()
            key = (torch.get_num_threads(), tuple(inputs.shape))
            if key not in self.compiled:
                self._compile(key)
            with torch.compiler.set_stance("fail_on_recompile"):  # never a silent recompile without the fusions
                out = self.compiled[key](inputs)
        return out.clone()

    def _compile(self, key: tuple[int, tuple[int, ...]]) -> None:
        compiled, code, seconds = compile_for_shape(self.module, torch.zeros(key[1]))
        self.compiled[key], self.compile_s[key] = compiled, seconds
        kernels = kernels_called(code)
        if not self.quantized:  # the float row runs float convolutions by design
            kernels["float_convolutions"] = kernels.pop("float_compute_ops")
        self.info.setdefault(key[1][1:], kernels)

    def deployment_info(self) -> dict[str, Any]:
        """Per sample shape: the kernels the compiled graph calls and each compile's seconds (batch, threads)."""
        out: dict[str, Any] = {}
        for sample, kernels in self.info.items():
            seconds = {f"batch{s[0]}_threads{t}": round(v, 3) for (t, s), v in sorted(self.compile_s.items())
                       if s[1:] == sample}
            out[_shape_key(sample)] = {**kernels, "compile_s": seconds}
        return out


# -- oneDNN's arithmetic, code for code ----------------------------------------------------------------------------
EXACT_FLOAT32 = 2**24  # integers up to this add exactly in float32


class OneDnnRequantize(QuantizeDequantize):
    """The output stage of oneDNN's int8 convolution and matmul: ``round_half_even(v * (1 / s) + z)`` in float32, the
    zero point added *before* rounding (Inductor's own kernels and ``quantize_per_tensor`` round, then add it: the
    two differ where ``v / s + z`` rounds onto a tie in float32)."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        codes = torch.clamp(torch.round(v * (1.0 / self.scale) + float(self.zero_point)), self.qmin, self.qmax)
        return (codes - self.zero_point) * self.scale


class OneDnnAccumulate(nn.Module):
    """A PT2E convolution or linear layer as oneDNN computes it before requantizing: the int32 accumulator of the
    input's codes minus its zero point times the int8 weight codes, then ``(acc * s_x) * s_w + bias`` in float32 (in
    that order: measured exact on every layer of MobileNetV1/V2, where ``acc * (s_x * s_w)`` or a fused multiply-add
    miss a few codes in a million; ``scripts/onednn_layers.py``). The accumulator is computed in float32 when no
    partial sum can pass 2**24, in float64 otherwise: exact either way."""

    def __init__(self, layer: DequantizedWeightLayer) -> None:
        super().__init__()
        self.layer = layer
        weights = layer.codes.double().abs().flatten(1).sum(1).max()
        largest_input = max(layer.input.zero_point - layer.input.qmin, layer.input.qmax - layer.input.zero_point)
        self.dtype = torch.float32 if float(weights) * largest_input < EXACT_FLOAT32 else torch.float64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        centred = torch.round(x / layer.input.scale).to(self.dtype)  # on-grid input: its code minus the zero point
        codes, shape = layer.codes.to(self.dtype), (1, -1)  # type: tuple[torch.Tensor, tuple[int, ...]]
        if isinstance(layer, Pt2eConv2d):
            if layer.tf_same:
                centred = tf_same_pad(centred, layer.kernel_size, layer.stride, layer.dilation)  # type: ignore[arg-type]
            elif layer.pads:
                centred = F.pad(centred, layer.pads)
            centred = centred.contiguous(memory_format=torch.channels_last)  # the fast layout; exact sums in any order
            acc = F.conv2d(centred, codes, None, layer.stride, layer.padding, layer.dilation, layer.groups).float()
            shape = (1, -1, 1, 1)
        else:
            acc = (centred @ codes.T).float()
        weight_scale = layer.weight_scale.float().view(shape) if layer.axis is not None else layer.tensor_scale
        v = acc * torch.tensor(layer.input.scale, dtype=torch.float32) * weight_scale
        return v + layer.bias.view(shape) if layer.bias is not None else v


def simulation_unsupported(isa: list[str]) -> str | None:
    """Why :func:`onednn_simulation` does not model this CPU's kernels, or None: it was checked against oneDNN's
    VNNI kernels (exact int32 sums); without VNNI they add pairs of products in int16 with saturation."""
    if "avx512_vnni" in isa or "avx_vnni" in isa:
        return None
    return "none on this CPU: oneDNN's int8 kernels without VNNI saturate pairs of products in int16, not modelled"


def onednn_simulation(qsim: QuantSim) -> fx.GraphModule:
    """The calibrated ``qsim`` in oneDNN's int8 arithmetic as ``torchao-x86`` runs it: the X86 Inductor PT2E graph
    with each convolution and linear layer replaced by :class:`OneDnnAccumulate` and the quantizer it feeds (through
    its fused ReLU / ReLU6) by :class:`OneDnnRequantize`; adds, pads and the pool stay as the graph computes them,
    which is what Inductor's C++ kernels compute (dequantize, float32 op, ``round(x * (1 / s)) + z``)."""
    gm = pt2e_module(qsim, X86_INDUCTOR)
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, DequantizedWeightLayer):
            gm.add_submodule(str(node.target), OneDnnAccumulate(module))
        elif isinstance(module, (QuantizeDequantize, Pt2eChannelClip)) and _fed_by_a_kernel(node.args[0], modules):
            output = module.output if isinstance(module, Pt2eChannelClip) else module
            requantize = OneDnnRequantize(output.scale, output.zero_point, X86_INDUCTOR)
            if isinstance(module, Pt2eChannelClip):
                module.output = requantize
            else:
                gm.add_submodule(str(node.target), requantize)
    gm.recompile()
    return gm


def _fed_by_a_kernel(node: Any, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is a convolution or linear layer's output, through any ReLU / ReLU6 oneDNN fuses into it."""
    while isinstance(node, fx.Node) and node.op in ("call_module", "call_function", "call_method"):
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, DequantizedWeightLayer):
            return True
        kind = type(module).__name__ if module is not None else str(getattr(node.target, "__name__", node.target))
        if not any(a in kind.lower() for a in ("relu", "hardtanh", "clamp")):
            return False
        node = node.args[0]
    return False


class TorchaoX86(Runtime):
    name = "torchao-x86"
    description = ("torchao PT2E + torch.compile (Inductor) on x86: oneDNN int8 kernels, uint8 activations, "
                   "symmetric int8 weights per channel")
    formats = frozenset({FLOAT, QUANTSIM, PT2E_X86_INDUCTOR})
    packages: ClassVar[tuple[str, ...]] = ("torchao",)

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("torchao") is None:  # not imported here: its import prints notices
            return "torchao is not installed (pip install 'mqbench[torchao]')"
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "torch.compile's C++ backend needs a C++ compiler (g++): apt-get install g++"
        return None

    def check_scheme(self, scheme: QuantScheme) -> str | None:
        problem = w8a8_problem(scheme, "oneDNN's int8 kernels")
        if problem:
            return problem
        if not scheme.weight_symmetric:
            return "the X86 Inductor quantizer's weights are symmetric int8 (zero point 0): drop -asym"
        if scheme.act_symmetric:
            return "the X86 Inductor quantizer's activations are asymmetric uint8: drop -sym"
        if scheme.reduce_range:
            return "torchao-x86 runs full 8-bit activations (reduce_range is for CPUs without VNNI): drop -rr"
        return None

    def load(self, artifact: Artifact) -> Deployed:
        if artifact.format == FLOAT:
            return InductorModel(artifact.payload.eval(), quantized=False)
        if artifact.format == QUANTSIM:
            return InductorModel(pt2e_module(artifact.payload, X86_INDUCTOR), quantized=True)
        if artifact.format == PT2E_X86_INDUCTOR:  # the pt2e toolkit's graph, as its quantizer wrote it
            return InductorModel(artifact.payload, quantized=True)
        raise ValueError(f"{self.name} cannot load a {artifact.format} artifact")

    def integer_simulation(self, qsim: Any) -> Deployed | None:
        if simulation_unsupported(cpu_isa()) is not None:
            return None
        return onednn_simulation(qsim)

    def info(self) -> dict[str, Any]:
        missing = self.unavailable()
        if missing:
            return {"runtime": None, "unavailable": missing}
        from importlib.metadata import version

        return {"runtime": f"torchao {version('torchao')}, torch {torch.__version__} Inductor",
                "quantizer_conventions": "X86InductorQuantizer (uint8 asymmetric activations, int8 symmetric "
                                         "per-channel weights, float bias)",
                "compile": "torch.export, torch.compile(dynamic=False) with freezing; one graph per input shape",
                "isa": cpu_isa(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "integer_simulation": simulation_unsupported(cpu_isa())
                or "oneDNN int8 convolution / matmul with VNNI (mqbench.backends.torchao_x86.onednn_simulation)"}


@hookimpl
def mqbench_register_runtimes(register: Registry[Runtime]) -> None:
    register(TorchaoX86())


__all__ = ["InductorModel", "OneDnnAccumulate", "OneDnnRequantize", "TorchaoX86", "compile_for_shape", "kernels_called",
           "onednn_simulation", "simulation_unsupported"]
