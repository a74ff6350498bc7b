"""A plugin for the fault matrix (tests/faults): models whose weights hold NaN or a negative BatchNorm variance (read
from ``$MQBENCH_FAULT_DIR``, written by the tests), methods that call ``sys.exit`` or fail with a message full of
Markdown, a model whose name is HTML, a plugin import that can be held (to interrupt start-up), and a second plugin
whose registration collides with a built-in after registering one model of its own."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from mqbench import hookimpl
from mqbench.backends.ort.runtime import OrtQDQ
from mqbench.methods.minmax import MinMax
from mqbench.models import FileWeights, ModelSpec
from tests.fake_plugins import Tiny

FAULT_DIR_ENV = "MQBENCH_FAULT_DIR"
HOLD_IMPORT_ENV = "MQBENCH_FAULT_HOLD_IMPORT"  # a file path: written on import, then the import waits 60 s
WEIGHTS = ("finite", "nan", "negative_bn_var")

if os.environ.get(HOLD_IMPORT_ENV):
    Path(os.environ[HOLD_IMPORT_ENV]).write_text(str(os.getpid()))
    time.sleep(60)


def _weights() -> tuple[FileWeights, ...]:
    root = Path(os.environ.get(FAULT_DIR_ENV, "/nonexistent"))
    return tuple(FileWeights(name, f"Tiny with {name} weights", dataset="synthetic", path=str(root / f"{name}.pt"))
                 for name in WEIGHTS)


class SysExit(MinMax):
    name = "sys_exit"
    description = "minmax, then calls sys.exit(3) inside the cell"

    def calibrate(self, qsim, calib, config, ctx):  # type: ignore[no-untyped-def]
        sys.exit(3)


class MarkdownBoom(MinMax):
    name = "markdown_boom"
    description = "fails with a message holding a pipe, a newline and HTML"

    def calibrate(self, qsim, calib, config, ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("bad | value\nsecond <script>alert(1)</script> line")


class HalfNaNRuntime(OrtQDQ):
    """ONNX Runtime QDQ whose deployed model returns NaN logits on every other image (a runtime bug, say): the
    simulation is finite, the deployment is not."""

    name = "half-nan-runtime"
    description = "ort-qdq whose deployed logits are NaN on every other image (tests)"

    def load_quantsim(self, qsim):  # type: ignore[no-untyped-def]
        deployed = super().load_quantsim(qsim)

        def run(x: torch.Tensor) -> torch.Tensor:
            out = deployed(x).clone()
            out[::2] = float("nan")
            return out

        return run

    def integer_simulation(self, qsim):  # type: ignore[no-untyped-def]
        return None


@hookimpl
def mqbench_register_runtimes(register):  # type: ignore[no-untyped-def]
    register(HalfNaNRuntime())


@hookimpl
def mqbench_register_models(register):  # type: ignore[no-untyped-def]
    register(ModelSpec("fault_tiny", Tiny, "one-conv model with test weights", "plain_cnn", 32, _weights()))
    register(ModelSpec("<b>evil</b>", Tiny, "a model whose name is HTML", "plain_cnn", 32, _weights()))


@hookimpl
def mqbench_register_methods(register):  # type: ignore[no-untyped-def]
    register(SysExit())
    register(MarkdownBoom())
