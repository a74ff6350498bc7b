"""First-wave records read in the toolkit x runtime shape: the committed ort-default record becomes the cell that
`--toolkit ort:minmax --backend ort-qdq` asks for today (same hash, so a sweep finds it stored), its file unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mqbench import harness
from mqbench.plugins import Plugins
from mqbench.record_migrations import migrate
from mqbench.report import leaderboard
from mqbench.store import Store
from mqbench.suites import PAPERS

REPO = Path(__file__).resolve().parents[2]
FIRST_WAVE = REPO / "results" / "records" / "20261124T061727-408e6c4a48d2-55d88560.json"


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins(entry_points=False)


def test_the_published_ort_default_record_is_the_ort_minmax_cell_on_ort_qdq(plugins: Plugins, tmp_path: Path) -> None:
    before = hashlib.sha256(FIRST_WAVE.read_bytes()).hexdigest()
    (tmp_path / "records").mkdir()
    shutil.copy(FIRST_WAVE, tmp_path / "records")
    store = Store(tmp_path)
    (record,) = store.load().records
    assert record["config"]["pipeline"] == "ort:minmax" and record["config"]["backend"] == "ort-qdq"
    assert record["migrated_from"] == {"backend": "ort-default", "pipeline": "minmax",
                                       "config_hash": "408e6c4a48d2986df161d770b95d46c78a7e97c37a2b56122da5a3a27abadab3"}
    cells = [c for c in harness.expand(plugins, PAPERS, models=["mobilenet_v2:tf2ptq"], quantizers=["ort:minmax"],
                                       runtimes=["ort-qdq"], schemes=["w8a8-pt"]) if c.calib_size == 512]
    assert cells and harness.resolve(cells[0], plugins).config_hash == record["config_hash"]
    assert record["config_hash"] in store.completed()  # rerunning the papers suite finds it stored
    (row,) = leaderboard.rows_from_records([record])
    assert (row["pipeline"], row["backend"], row["top1"]) == ("ort:minmax", "ort-qdq", 107 / 1300)
    assert hashlib.sha256(FIRST_WAVE.read_bytes()).hexdigest() == before  # read, never rewritten


@pytest.mark.parametrize(("backend", "pipeline", "runtime", "quantizer"), [
    ("ort-default", "entropy", "ort-qdq", "ort:entropy"),
    ("torch-default", "mse", "torch-x86", "torch.ao:default"),
    ("torch-default", "minmax", "torch-x86", "torch.ao:minmax"),
])
def test_every_first_wave_peer_maps_to_todays_cell(plugins: Plugins, backend: str, pipeline: str, runtime: str,
                                                   quantizer: str) -> None:
    old = json.loads(FIRST_WAVE.read_text())
    old["config"].update(backend=backend, pipeline=pipeline, scheme="w8a8-pc")
    new = migrate(old)
    cell = harness.Cell("mobilenet_v2", "tf2ptq", "imagenet", quantizer, runtime, "w8a8-pc", calib_size=512)
    assert new["config"] == harness.resolve(cell, plugins).config
    assert migrate(new) is new  # a record in today's shape passes unchanged
