"""Train the quick suite's three models with ``mqbench train`` into ``mqbench/models/shipped`` and write their
sha256 table (``mqbench/models/shipped/__init__.py``).

    python scripts/ship_quick_weights.py            # about 4 minutes on 2 cores

Each model is trained by the command its sidecar records (``mqbench train --model ... --out ...``), built from the
recipe the model registers (``TrainedWeights.train``); the file name's key hashes that recipe, so the harness finds
the file for exactly that recipe and a changed recipe finds none (and trains, as before).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

from mqbench.models.builtin import QUICK_MODELS
from mqbench.models.shipped import SHIPPED_DIR
from mqbench.models.weights import recipe_file_name, train_recipe
from mqbench.train import TrainConfig


def train_argv(model: str, dataset: str, config: TrainConfig, out: Path) -> list[str]:
    """The ``mqbench train`` arguments that train with ``config``."""
    if config.distill_weight or config.distill_temperature != 1.0:
        raise ValueError(f"{model}: mqbench train has no distillation options")
    argv = ["train", "--model", model, "--dataset", dataset, "--epochs", str(config.epochs),
            "--batch-size", str(config.batch_size), "--lr", repr(config.lr), "--momentum", repr(config.momentum),
            "--weight-decay", repr(config.weight_decay), "--seed", str(config.seed),
            "--crop-padding", str(config.crop_padding), "--label-smoothing", repr(config.label_smoothing)]
    argv += [] if config.flip else ["--no-flip"]
    argv += [] if config.channels_last else ["--contiguous"]
    if config.depthwise_weight_decay is not None:
        argv += ["--depthwise-weight-decay", repr(config.depthwise_weight_decay)]
    return [*argv, "--out", str(out), "--force", "--quiet"]


def main() -> int:
    table = {}
    for spec in QUICK_MODELS:
        weights = spec.weights[0]
        name = recipe_file_name(train_recipe(spec.name, dict(weights.build_kwargs), weights.dataset, None,
                                             weights.train))
        subprocess.run([sys.executable, "-m", "mqbench", *train_argv(spec.name, weights.dataset, weights.train,
                                                                      SHIPPED_DIR)], check=True)
        path = SHIPPED_DIR / name
        table[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{name}  {table[name]}", flush=True)
    init = SHIPPED_DIR / "__init__.py"
    body = "".join(f'    "{name}": "{digest}",\n' for name, digest in sorted(table.items()))
    text = re.sub(r"SHIPPED: dict\[str, str\] = \{\n.*?\}", lambda _: f"SHIPPED: dict[str, str] = {{\n{body}}}",
                  init.read_text(), flags=re.S)
    init.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
