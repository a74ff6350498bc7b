"""Image datasets through `datasets`: parquet, image folder, flat folder + ground truth; the decoded
cache; missing files and corrupt images reported by name."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from mqbench.data import images as img_mod
from mqbench.data.images import DataError, ImageDataset, ImageSource
from mqbench.errors import UsageError


def _png(value: int, size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size + 10, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    (root / "toy").mkdir(parents=True)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3),
                               "file": datasets.Value("string")})
    rows = {"image": [{"bytes": _png(10 * i), "path": None} for i in range(6)], "label": [i % 3 for i in range(6)],
            "file": [f"img{i}.png" for i in range(6)]}
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(root / "toy" / "val.parquet"))
    rows["image"][4] = {"bytes": b"\x89PNG broken", "path": None}
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(root / "toy" / "bad.parquet"))
    for cls in ("n01", "n02"):
        (root / "folder" / cls).mkdir(parents=True)
        for i in range(2):
            (root / "folder" / cls / f"{i}.png").write_bytes(_png(50 + i))
    (root / "flat").mkdir()
    for i in range(3):
        (root / "flat" / f"v{i}.png").write_bytes(_png(100 + i))
    (root / "gt.txt").write_text("v0.png 7\nv1.png 3\nv2.png 9\nmissing.png 1\n")
    monkeypatch.setenv("MQBENCH_DATA", str(root))
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    return root


def toy(**splits: ImageSource) -> ImageDataset:
    return ImageDataset("toy", "toy", 10, 32, splits=tuple(splits.items()))


def test_parquet_split_decodes_in_order_with_preprocessing(data: Path) -> None:
    ds = toy(test=ImageSource("parquet", ("toy/val.parquet",)))
    split = ds.load_split("test", preprocess="tf-inception@16")
    assert split.images.shape == (6, 3, 16, 16) and split.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert split.images[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40, 50]
    assert split.mean == (0.5, 0.5, 0.5)
    assert len(ds.load_split("test", limit=4, preprocess="tf-inception@16")) == 4


def test_second_load_comes_from_the_cache_without_decoding(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = toy(test=ImageSource("parquet", ("toy/val.parquet",)))
    first = ds.load_split("test", preprocess="tf-inception@16")
    cached = list((data.parent / "cache" / "decoded").glob("toy-test-*.pt"))
    assert len(cached) == 1

    def no_decode(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("decoded again")

    monkeypatch.setattr(img_mod.Image, "open", no_decode)
    monkeypatch.setattr(img_mod, "_rows", no_decode)
    second = ds.load_split("test", preprocess="tf-inception@16")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.fingerprint() == first.fingerprint()


def test_cache_key_separates_preprocessing_and_size(data: Path) -> None:
    ds = toy(test=ImageSource("parquet", ("toy/val.parquet",)))
    ds.load_split("test", preprocess="tf-inception@16")
    ds.load_split("test", preprocess="torchvision-imagenet@16")
    ds.load_split("test", limit=2, preprocess="tf-inception@16")
    assert len(list((data.parent / "cache" / "decoded").glob("toy-test-*.pt"))) == 3


def test_corrupt_image_names_the_file(data: Path) -> None:
    ds = toy(test=ImageSource("parquet", ("toy/bad.parquet",)))
    with pytest.raises(DataError, match=r"corrupt image 'img4\.png' in toy/test"):
        ds.load_split("test", preprocess="tf-inception@16")


def test_image_folder_labels_are_sorted_class_folders(data: Path) -> None:
    ds = toy(test=ImageSource("imagefolder", ("folder",)))
    split = ds.load_split("test", preprocess="tf-inception@16")
    assert sorted(split.labels.tolist()) == [0, 0, 1, 1]


def test_flat_folder_with_ground_truth(data: Path) -> None:
    ds = toy(test=ImageSource("flatfolder", ("flat",), ground_truth="gt.txt"))
    split = ds.load_split("test", preprocess="tf-inception@16")
    assert split.labels.tolist() == [7, 3, 9]  # missing.png is not in the folder


def test_missing_files_and_splits_say_what_was_expected(data: Path) -> None:
    with pytest.raises(UsageError, match=r"expects .*toy/nope\.parquet, which does not exist"):
        toy(test=ImageSource("parquet", ("toy/nope.parquet",))).load_split("test", preprocess="cifar")
    with pytest.raises(UsageError, match=r"has no split 'calib'; it has \['test'\]"):
        toy(test=ImageSource("parquet", ("toy/val.parquet",))).load_split("calib", preprocess="cifar")


def test_missing_data_dir_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match=r"MQBENCH_DATA=.*nowhere is not a directory"):
        toy(test=ImageSource("parquet", ("toy/val.parquet",))).load_split("test", preprocess="cifar")
