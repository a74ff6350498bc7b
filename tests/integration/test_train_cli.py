"""`mqbench train`: a checkpoint with its sha256 and config; killed mid-training, the same command resumes and
ends with the same file as an uninterrupted run; a finished file is reused."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.helpers import cli_env, mqbench, popen_mqbench

pytestmark = pytest.mark.slow

ARGS = ("train", "--model", "quick_cnn", "--dataset", "synthetic", "--epochs", "6", "--train-limit", "1024",
        "--test-limit", "256", "--quiet")


def _sidecar(out: Path) -> dict:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def test_a_killed_training_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path: Path) -> None:
    env = cli_env(Path(os.environ.get("MQBENCH_CACHE") or tmp_path / "cache"))
    whole = mqbench(*ARGS, "--out", str(tmp_path / "whole"), env=env)
    assert whole.returncode == 0, whole.stderr
    reference = _sidecar(tmp_path / "whole")
    assert reference["epochs_done"] == 6 and reference["resumed_from_epoch"] == 0
    assert reference["train_config"]["epochs"] == 6 and reference["train_config"]["crop_padding"] == 4
    assert reference["command"].startswith("mqbench train --model quick_cnn") and reference["provenance"]["torch"]
    assert not list((tmp_path / "whole").glob("*.ckpt"))  # the checkpoint is dropped once the weights are written

    out = tmp_path / "killed"
    proc = popen_mqbench(*ARGS, "--out", str(out), env=env)
    deadline = time.monotonic() + 300
    while not list(out.glob("*.ckpt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait()
    assert list(out.glob("*.ckpt")) and not list(out.glob("*.pt")), "the run finished before it could be killed"

    resumed = mqbench(*ARGS, "--out", str(out), env=env)
    assert resumed.returncode == 0, resumed.stderr
    meta = _sidecar(out)
    assert 1 <= meta["resumed_from_epoch"] < 6 and meta["epochs_done"] == 6
    assert meta["sha256"] == reference["sha256"] and meta["file"] == reference["file"]
    assert [h["test_top1"] for h in meta["history"]] == [h["test_top1"] for h in reference["history"]]

    again = mqbench(*ARGS, "--out", str(out), env=env)
    assert again.returncode == 0 and "already trained" in again.stdout and reference["sha256"] in again.stdout


@pytest.mark.parametrize(("extra", "expected"), [
    (("--epochs", "0"), "argument --epochs: must be a whole number from 1 to 10000, got 0"),
    (("--build", "nonsense=1"), "--build for model quick_cnn"),
    (("--train-limit", "0"), "argument --train-limit: must be a whole number >= 1, got 0"),
    (("--model", "quick_cnm"), "unknown model 'quick_cnm'"),
])
def test_train_usage_errors_are_one_line(extra: tuple[str, ...], expected: str, tmp_path: Path) -> None:
    args = [a for a in ARGS]
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    res = mqbench(*args, "--out", str(tmp_path / "out"), env=cli_env(tmp_path / "cache"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], res.stderr
    assert not (tmp_path / "out").exists()
