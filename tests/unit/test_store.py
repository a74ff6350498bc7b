"""The record store: atomic, append-only, never overwrites, skips what is not a record."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from mqbench.errors import ResultsDirError
from mqbench.store import SCHEMA, SCHEMA_VERSION, Store, new_record_id, release


def record(h: str = "a" * 64, status: str = "ok", created: str = "2026-11-22T10:00:00.000001+00:00") -> dict:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "record_id": new_record_id(), "created": created,
            "config_hash": h, "config": CONFIG, "status": status, **STATUS_FIELD.get(status, {})}


CONFIG = {"model": "m", "weights": "w", "dataset": "d", "pipeline": "minmax", "backend": "simulated", "scheme": "w8a8",
          "seed": 0}
STATUS_FIELD = {"ok": {"metrics": {}}, "failed": {"error": {"type": "E", "message": "m"}}, "skipped": {"skip_reason": "r"}}


def test_append_and_load_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    r = record()
    path = store.append(r)
    assert path.parent == tmp_path / "records" and path.suffix == ".json"
    loaded = store.load()
    assert loaded.problems == [] and len(loaded.records) == 1
    assert {k: v for k, v in loaded.records[0].items() if k != "_path"} == r
    assert [p.name for p in (tmp_path / "records").iterdir()] == [path.name]  # no temp files left


def test_append_never_overwrites(tmp_path: Path) -> None:
    store = Store(tmp_path)
    r = record()
    store.append(r)
    with pytest.raises(FileExistsError):
        store.append(r)  # same record id and time: same name
    assert len(store.load().records) == 1


def test_completed_hashes_exclude_failed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append(record("1" * 64, "ok"))
    store.append(record("2" * 64, "failed"))
    store.append(record("3" * 64, "skipped"))
    assert store.completed_hashes() == {"1" * 64, "3" * 64}


def test_corrupt_and_foreign_files_are_reported_and_left_untouched(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append(record())
    d = tmp_path / "records"
    files = {"truncated.json": b'{"schema": "mqbench.rec', "foreign.json": b'{"hello": "world"}\n',
             "newer.json": json.dumps({**record("b" * 64), "schema_version": SCHEMA_VERSION + 1}).encode(),
             "newer-mqbench.json": json.dumps({**record("d" * 64), "provenance": {"mqbench": "99.0.1"}}).encode(),
             "binary.json": b"\xff\xfe\x00garbage", "list.json": b"[1, 2]"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / ".half-written.json.partial").write_bytes(b'{"schema"')
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}
    loaded = store.load()
    assert len(loaded.records) == 1
    problems = {p.name: why for p, why in loaded.problems}
    assert set(problems) == set(files)
    assert "not valid JSON" in problems["truncated.json"] and "newer mqbench" in problems["newer.json"]
    assert "not an mqbench record" in problems["foreign.json"]
    assert problems["newer-mqbench.json"].startswith("written by a newer mqbench (99.0.1 > ")
    store.append(record("c" * 64))
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}
    assert all(after[n] == h for n, h in before.items())


def test_invalid_record_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="status"):
        Store(tmp_path).append(record(status="weird"))


def test_results_path_under_a_file_is_not_writable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ResultsDirError, match=r"not writable.*--results"):
        Store(tmp_path / "afile" / "results").ensure_writable()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_read_only_results_dir_is_not_writable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    (ro / "records").mkdir(parents=True)
    ro.chmod(0o500)
    (ro / "records").chmod(0o500)
    try:
        with pytest.raises(ResultsDirError, match="not writable"):
            Store(ro).ensure_writable()
    finally:
        (ro / "records").chmod(0o700)
        ro.chmod(0o700)


def test_release_numbers_of_version_strings() -> None:
    assert release("0.2.1rc1+g3f") == (0, 2, 1) and release("1.10") == (1, 10, 0) and release("v3") == (3, 0, 0)
    assert release("unknown") == (0, 0, 0) and release("0.10.0") > release("0.9.9")
