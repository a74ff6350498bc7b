"""Decoding val-1300 (cold) and loading it from the decoded cache.
Run: python -m pytest tests/benchmarks/test_bench_data.py --benchmark-only"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mqbench.data.images import IMAGENET
from mqbench.data.paths import data_dir

DATA = data_dir()
pytestmark = pytest.mark.skipif(DATA is None or not (DATA / "imagenet" / "val-1300.parquet").exists(),
                                reason="real data not found")


def test_decode_val1300_cold(benchmark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))

    def clear() -> None:
        shutil.rmtree(tmp_path / "decoded", ignore_errors=True)
        shutil.rmtree(tmp_path / "hf-datasets", ignore_errors=True)

    split = benchmark.pedantic(lambda: IMAGENET.load_split("test", preprocess="tf-inception@224"), setup=clear,
                               rounds=2, iterations=1)
    assert split.images.shape == (1300, 3, 224, 224)


def test_load_val1300_from_the_decoded_cache(benchmark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    IMAGENET.load_split("test", preprocess="tf-inception@224")
    split = benchmark.pedantic(lambda: IMAGENET.load_split("test", preprocess="tf-inception@224"), rounds=5,
                               iterations=1)
    assert split.images.shape == (1300, 3, 224, 224)
