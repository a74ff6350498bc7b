"""Weights mqbench ships: the quick suite's three models, trained on the synthetic dataset.

Each file is what ``mqbench train`` writes for the model's recipe (``TrainedWeights.train`` of
:mod:`mqbench.models.builtin`), with its JSON sidecar (training config, the command, test top-1 per epoch, machine).
So ``mqbench run --all`` needs no training, and anyone can check the files: the command in each sidecar writes a
file with the same sha256 on a 2-core x86-64 machine like the one they were made on
(``tests/integration/test_shipped_weights.py`` retrains one in CI). Regenerate them all with
``python scripts/ship_quick_weights.py`` after a change to a quick model, its recipe or the synthetic data.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).parent

# file name -> sha256 of the file, checked on every load.
SHIPPED: dict[str, str] = {
    "quick_cnn-synthetic-0e0c9cf647a4.pt": "b1f9b2f3dbb4f83912809fd6e9d43711a947682cbc147102e04d57848c0efcb7",
    "quick_mobilenet_v1-synthetic-f17f0faaf939.pt": "cda08ec190a73c369a76e84fd8f25b80febe3f8462b59a87b65df9efb787e0a0",
    "quick_mobilenet_v2-synthetic-59a95674efc0.pt": "9a2e3fea600b97dd9367186ea3b38b61b7fd3b0592af257a09c2c19eb13c19b6",
}
