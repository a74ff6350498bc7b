"""scripts/bench_compare.py: a benchmark's change is divided by the machine's drift before it is called a regression."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("bench_compare", REPO / "scripts" / "bench_compare.py")
assert spec is not None and spec.loader is not None
bench_compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_compare)


def _save(folder: Path, name: str, minima: dict[str, float], mtime: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"benchmarks": [{"name": k, "stats": {"min": v}} for k, v in minima.items()]}))
    os.utime(path, (mtime, mtime))


def test_a_slower_machine_is_not_a_regression_and_a_slower_benchmark_is(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ref = bench_compare.REFERENCE
    history = tmp_path / "history"
    monkeypatch.setattr("sys.argv", ["bench_compare", "--history", str(history)])
    assert bench_compare.compare({ref: 1.0, "forward": 2.0}, {ref: 1.5, "forward": 3.0}) == (1.5, {"forward": 1.0})
    _save(history / "m", "0001_a.json", {ref: 1.0, "forward": 2.0, "render": 0.5}, 1000)
    _save(history / "m", "0002_b.json", {ref: 1.5, "forward": 3.0, "render": 0.75}, 2000)  # everything 1.5x: drift
    assert bench_compare.main() == 0
    assert "machine drift (test_machine_reference): 1.50x" in capsys.readouterr().out
    _save(history / "m", "0003_c.json", {ref: 1.5, "forward": 6.0, "render": 0.75}, 3000)  # forward 2x, machine same
    assert bench_compare.main() == 1
    out = capsys.readouterr().out
    assert "2.00x  forward  REGRESSED" in out and "render  REGRESSED" not in out
    _save(history / "m", "0004_d.json", {"forward": 6.0, "render": 0.75}, 4000)  # no reference: uncorrected
    assert bench_compare.main() == 0 and "not in both runs: uncorrected" in capsys.readouterr().out
