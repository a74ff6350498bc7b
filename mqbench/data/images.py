"""Real image datasets through Hugging Face ``datasets``, decoded once and cached as tensors.

A split comes from one :class:`ImageSource`:

* ``parquet``: parquet files with an ``image`` (``datasets.Image``) and a ``label`` column, like
  ``../shared/data`` (``datasets.load_dataset("parquet", data_files=...)``);
* ``imagefolder``: a folder of class folders (``datasets.load_dataset("imagefolder", ...)``; labels are
  the sorted folder names, which for ImageNet's WordNet-id folders is the standard 0..999 order);
* ``flatfolder``: a flat folder of images plus a ground-truth file of ``<file name> <label>`` lines
  (the ILSVRC2012 validation layout with ``ILSVRC2012_val_ground_truth_50000.txt``);
* ``hub``: a Hugging Face hub dataset name and split (``imagenet-1k``, ``uoft-cs/cifar10``; needs a
  network and, for ImageNet, accepted terms; streamed when only the first images are wanted).

Relative paths are inside the data directory (``$MQBENCH_DATA``). Decoded splits are cached in
``$MQBENCH_CACHE/decoded`` keyed by the source's fingerprint (file sha256s, or the hub name and
split), the split, the number of images and the preprocessing, so a second evaluation never decodes
a JPEG. A corrupt image is an error naming its file.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mqbench import hookimpl
from mqbench.data import DatasetSpec, Split
from mqbench.data.paths import data_file
from mqbench.data.preprocess import parse_preprocess
from mqbench.errors import MqbenchError, UsageError
from mqbench.fsutil import atomic_write, cache_dir, sha256_file
from mqbench.progress import SILENT, Reporter
from mqbench.registry import Registry

DECODE_VERSION = 1


class DataError(MqbenchError):
    """A dataset file is missing, unreadable or holds a corrupt image."""


@dataclass(frozen=True)
class ImageSource:
    kind: Literal["parquet", "imagefolder", "flatfolder", "hub"]
    paths: tuple[str, ...]  # parquet files, or one folder, or one hub dataset name
    hub_split: str = "train"
    ground_truth: str | None = None
    image_column: str = "image"
    label_column: str = "label"


@dataclass(frozen=True)
class ImageDataset(DatasetSpec):
    """A dataset of real images; ``splits`` maps split names to sources."""

    splits: tuple[tuple[str, ImageSource], ...] = ()

    def __post_init__(self) -> None:
        sources = dict(self.splits)
        if "calib" in sources and sources.get("calib") == sources.get("test"):
            raise ValueError(f"dataset {self.name!r} would calibrate on its evaluation images: its calib and test "
                             "splits have the same source")

    def check(self, splits: tuple[str, ...] = ("calib", "test")) -> None:
        for split in splits:
            source = self.source(split)
            if source.kind != "hub":
                for path in (*source.paths, *((source.ground_truth,) if source.ground_truth else ())):
                    data_file(path, f"dataset {self.name}/{split}")

    def source(self, split: str) -> ImageSource:
        sources = dict(self.splits)
        if split not in sources:
            raise UsageError(f"dataset {self.name!r} has no split {split!r}; it has {sorted(sources)}")
        return sources[split]

    def split_size(self, split: str) -> int | None:
        """The row count of a parquet split (from the files' metadata); None for folders and the hub."""
        source = self.source(split)
        if source.kind != "parquet":
            return None
        import pyarrow.parquet as pq

        try:
            return sum(pq.ParquetFile(data_file(p, f"dataset {self.name}/{split}")).metadata.num_rows
                       for p in source.paths)
        except (OSError, ValueError):  # unreadable: loading the split reports it properly
            return None

    def load_split(self, split: str, limit: int | None = None, preprocess: str = "native",
                   reporter: Reporter = SILENT) -> Split:
        source = self.source(split)
        pp = parse_preprocess(preprocess)
        fingerprint = _source_fingerprint(self.name, split, source)
        key = hashlib.sha256(json.dumps([DECODE_VERSION, fingerprint, split, limit, pp.name]).encode()).hexdigest()
        cached = cache_dir() / "decoded" / f"{self.name}-{split}-{limit or 'all'}-{pp.name}-{key[:16]}.pt"
        if cached.exists():
            try:
                data = torch.load(cached, map_location="cpu", weights_only=True)
                return Split(data["images"], data["labels"], pp.mean, pp.std)
            except Exception as exc:  # a damaged cache file is rebuilt, and said so
                reporter.log(f"decoded cache {cached} is unreadable ({type(exc).__name__}); decoding again")
        images, labels = [], []
        for name, image_bytes, path, label in reporter.track(_rows(source, limit), f"decoding {self.name}/{split}",
                                                             total=limit):
            try:
                if image_bytes is not None:
                    image = Image.open(io.BytesIO(image_bytes))
                elif path is not None:
                    image = Image.open(path)
                else:
                    raise ValueError("the row has neither image bytes nor a path")
                image.load()
                images.append(pp(image))
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise DataError(f"corrupt image {name!r} in {self.name}/{split}: {type(exc).__name__}: {exc}") from None
            labels.append(label)
        if not images:
            raise DataError(f"{self.name}/{split} holds no images")
        shapes = {a.shape for a in images}
        if len(shapes) != 1:
            raise DataError(f"{self.name}/{split}: images of different sizes {sorted(shapes)[:3]} after {pp.name}; "
                            "use a preset that resizes")
        split_obj = Split(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), pp.mean, pp.std)
        buf = io.BytesIO()
        torch.save({"images": split_obj.images, "labels": split_obj.labels}, buf)
        atomic_write(cached, buf.getvalue(), overwrite=True)
        return split_obj


def _source_fingerprint(dataset: str, split: str, source: ImageSource) -> list[Any]:
    if source.kind == "hub":
        return [source.kind, source.paths, source.hub_split, source.image_column, source.label_column]
    files = [data_file(p, f"dataset {dataset}/{split}") for p in source.paths]
    if source.kind == "parquet":
        return [source.kind, [sha256_file(f) for f in files]]
    folder = files[0]
    listing = sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    extra = sha256_file(data_file(source.ground_truth, f"dataset {dataset}/{split}")) if source.ground_truth else None
    return [source.kind, hashlib.sha256(json.dumps(listing).encode()).hexdigest(), extra]


def _load_hf(source: ImageSource, limit: int | None) -> Any:
    import datasets

    datasets.disable_progress_bars()  # mqbench shows its own decoding progress
    hf_cache = str(cache_dir() / "hf-datasets")
    if source.kind == "parquet":
        files = [str(data_file(p, "dataset")) for p in source.paths]
        ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=hf_cache)
    elif source.kind == "imagefolder":
        ds = datasets.load_dataset("imagefolder", data_dir=str(data_file(source.paths[0], "dataset")), split="train",
                                   cache_dir=hf_cache)
    elif source.kind == "hub":
        try:
            ds = datasets.load_dataset(source.paths[0], split=source.hub_split, streaming=limit is not None,
                                       cache_dir=hf_cache)
        except Exception as exc:  # offline, gated, unknown name
            raise DataError(f"cannot load hub dataset {source.paths[0]} ({source.hub_split}): "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        if limit is not None:
            return ds.take(limit).cast_column(source.image_column, datasets.Image(decode=False))
    else:
        raise AssertionError(source.kind)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds.cast_column(source.image_column, datasets.Image(decode=False))


def _rows(source: ImageSource, limit: int | None) -> Iterator[tuple[str, bytes | None, str | None, int]]:
    """(name, image bytes or None, path or None, label) in the source's order."""
    if source.kind == "flatfolder":
        folder = data_file(source.paths[0], "dataset")
        assert source.ground_truth is not None
        gt = data_file(source.ground_truth, "dataset")
        n = 0
        for line in gt.read_text().splitlines():
            if not line.strip():
                continue
            name, label = line.split()
            path = folder / name
            if not path.exists():
                continue
            yield name, None, str(path), int(label)
            n += 1
            if limit is not None and n >= limit:
                return
        if n == 0:
            raise DataError(f"no image of {gt} was found in {folder}")
        return
    ds = _load_hf(source, limit)
    has_file = "file" in (ds.column_names or [])
    for i, row in enumerate(ds):
        img = row[source.image_column]
        name = row["file"] if has_file else (img.get("path") or f"row {i}")
        yield str(name), img.get("bytes"), img.get("path"), int(row[source.label_column])


IMAGENET = ImageDataset(
    name="imagenet", description="ImageNet: calib-1000 for calibration, val-1300 (ILSVRC2012 val) for evaluation",
    num_classes=1000, image_size=224,
    splits=(("calib", ImageSource("parquet", ("imagenet/calib-1000.parquet",))),
            ("test", ImageSource("parquet", ("imagenet/val-1300.parquet",)))))

IMAGENET_VAL_FOLDER = ImageDataset(
    name="imagenet-val-folder",
    description="ImageNet: the full ILSVRC2012 val set as a flat folder imagenet/val + ground truth; calib-1000",
    num_classes=1000, image_size=224,
    splits=(("calib", ImageSource("parquet", ("imagenet/calib-1000.parquet",))),
            ("test", ImageSource("flatfolder", ("imagenet/val",),
                                 ground_truth="imagenet/ILSVRC2012_val_ground_truth_50000.txt"))))

IMAGENET_HUB = ImageDataset(
    name="imagenet-hub", description="ImageNet from the Hugging Face hub (imagenet-1k; network and accepted terms)",
    num_classes=1000, image_size=224,
    splits=(("calib", ImageSource("hub", ("imagenet-1k",), hub_split="train")),
            ("test", ImageSource("hub", ("imagenet-1k",), hub_split="validation"))))

_CIFAR_TRAIN = tuple(f"cifar10/train-0000{i}-of-00004.parquet" for i in range(4))
CIFAR10 = ImageDataset(
    name="cifar10", description="CIFAR-10 (JPEG q75 copy): train for calibration and training, test for evaluation",
    num_classes=10, image_size=32,
    splits=(("train", ImageSource("parquet", _CIFAR_TRAIN)), ("calib", ImageSource("parquet", _CIFAR_TRAIN)),
            ("test", ImageSource("parquet", ("cifar10/test.parquet",)))))

CIFAR10_HUB = ImageDataset(
    name="cifar10-hub", description="CIFAR-10 from the Hugging Face hub (uoft-cs/cifar10; network)",
    num_classes=10, image_size=32,
    splits=tuple((s, ImageSource("hub", ("uoft-cs/cifar10",), hub_split=h, image_column="img"))
                 for s, h in (("train", "train"), ("calib", "train"), ("test", "test"))))


@hookimpl
def mqbench_register_datasets(register: Registry[DatasetSpec]) -> None:
    for spec in (IMAGENET, IMAGENET_VAL_FOLDER, IMAGENET_HUB, CIFAR10, CIFAR10_HUB):
        register(spec)
