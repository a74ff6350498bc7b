"""`mqbench leaderboard --publish`: every output derived from records only, byte-identical on re-render,
environments never mixed, unreadable files listed and left out, a self-contained page."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from mqbench.report import papers, publish
from mqbench.store import SCHEMA, SCHEMA_VERSION, Store


def rec(pipeline: str, scheme: str, top1: float, created: str, model: str = "mobilenet_v2", torch: str = "2.13.0",
        backend: str = "simulated") -> dict:
    acc = {"n": 1300, "top1": {"value": top1, "ci95": [top1 - 0.02, top1 + 0.02]},
           "top5": {"value": 0.95, "ci95": [0.94, 0.96]}}
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "record_id": created[-6:] + "0" * 26,
            "created": created, "config_hash": f"{model}-{pipeline}-{scheme}-{backend}-{torch}", "status": "ok",
            "suite": "imagenet",
            "config": {"dataset": "imagenet", "model": model, "weights": "tf2ptq", "pipeline": pipeline,
                       "backend": backend, "scheme": scheme, "seed": 0, "eval_limit": None},
            "weights": {"name": "tf2ptq", "sha256": "ab" * 32, "source": "file:/data/imagenet/weights/v2.pth"},
            "data": {"dataset": "imagenet", "eval": {"split": "test", "size": 1300, "fingerprint": "cd" * 32},
                     "calib": {"split": "calib", "size": 512}},
            "provenance": {"cpu": {"model": "CPU X", "machine": "x86_64", "isa": ["avx2", "fma"]}, "threads": 2,
                           "torch": torch, "onnxruntime": "1.32.0", "mqbench": "0.1.0",
                           "git": {"commit": "0123456789abcdef", "dirty": False}},
            "metrics": {"sim": {"accuracy": acc}}}


def _store(root: Path, records: list[dict]) -> Store:
    store = Store(root)
    for r in records:
        store.append(r)
    return store


def _digest(root: Path) -> dict[str, str]:
    names = [*publish.OUTPUTS, *(p.relative_to(root).as_posix() for p in (root / publish.PLOTS_DIR).rglob("*")
                                 if p.is_file())]
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in sorted(names)}


RECORDS = [rec("fp32", "fp32", 0.79, "2026-01-01T00:00:01.000001+00:00"),
           rec("minmax", "w8a8-pt", 0.074, "2026-01-01T00:00:02.000001+00:00"),
           rec("cle+mse+bias_correction", "w8a8-pt", 0.70, "2026-01-01T00:00:03.000001+00:00")]


def test_publish_writes_every_output_and_re_renders_byte_identically(tmp_path: Path) -> None:
    store = _store(tmp_path / "a", RECORDS)
    written = publish.publish(store.load(), store.root)
    assert {p.name for p in written} >= set(publish.OUTPUTS)
    assert any(p.suffix == ".png" for p in written)
    first = _digest(store.root)
    shutil.copytree(store.root / "records", tmp_path / "b" / "records")  # another place, another listing order
    publish.publish(Store(tmp_path / "b").load(), tmp_path / "b")
    assert _digest(tmp_path / "b") == first
    publish.publish(store.load(), store.root)
    assert _digest(store.root) == first
    md = (store.root / "LEADERBOARD.md").read_text()
    assert "## Suite imagenet" in md and "### mobilenet_v2 (tf2ptq) on imagenet" in md
    assert "| minmax | w8a8-pt | simulated | 7.40 [5.40, 9.40] | 95.00 | -71.60" in md
    # every table says what its figures came from, and each row links to its record
    assert "sha256 `abababababababab`" in md and "1300 images" in md and "calibrated on 512 images" in md
    assert "CPU X x86_64 [avx2,fma], 2 threads; torch 2.13.0, onnxruntime 1.32.0, mqbench 0.1.0" in md
    for f in (store.root / "records").iterdir():
        assert f"(records/{f.name})" in md
    assert str(tmp_path) not in md and str(tmp_path) not in (store.root / "index.html").read_text()


def test_environments_are_never_mixed_in_one_table(tmp_path: Path) -> None:
    other = rec("minmax", "w8a8-pc", 0.75, "2026-01-01T00:00:04.000001+00:00", torch="2.14.0")
    store = _store(tmp_path, [*RECORDS, other])
    publish.publish(store.load(), store.root)
    md = (store.root / "LEADERBOARD.md").read_text()
    assert "### mobilenet_v2 (tf2ptq) on imagenet, environment 1 of 2" in md
    assert "### mobilenet_v2 (tf2ptq) on imagenet, environment 2 of 2" in md
    second = md.split("### mobilenet_v2 (tf2ptq) on imagenet, environment 2 of 2")[1]
    assert "torch 2.14.0" in second and "| minmax | w8a8-pc | simulated | 75.00" in second
    # no fp32 row in its environment: no delta to another environment's fp32
    row = next(line for line in second.splitlines() if line.startswith("| minmax | w8a8-pc"))
    assert row.split("|")[6].strip() == ""
    rows = json.loads((store.root / "leaderboard.json").read_text())["rows"]
    assert {r["environment"].split("torch ")[1][:6] for r in rows} == {"2.13.0", "2.14.0"}


def _on_runtime(record: dict, backend: str, runtime: str, installed: dict[str, str]) -> dict:
    record["config"]["backend"] = backend
    record["config_hash"] += f"-{backend}-{runtime}"
    record["plugins"] = {"backend": {"name": backend, "info": {"runtime": runtime}}}
    record["provenance"]["packages"] = installed
    return record


def test_runtimes_share_a_table_and_two_versions_of_one_runtime_do_not(tmp_path: Path) -> None:
    """Installing a runtime changes no other runtime's figures: records made before and after share a table; rows
    of one runtime in two versions split off into a table per version, and each table names its runtime versions."""
    before = rec("minmax", "w8a8-pc", 0.78, "2026-01-01T00:00:04.000001+00:00")  # nothing extra installed
    after = _on_runtime(rec("minmax", "w8a8-pc", 0.77, "2026-01-01T00:00:05.000001+00:00"), "openvino",
                        "openvino 2026.4.1-build", {"openvino": "2026.4.1", "executorch": "1.5.1"})
    xnn = _on_runtime(rec("minmax", "w8a8-pc", 0.76, "2026-01-01T00:00:06.000001+00:00"), "executorch-xnnpack",
                      "executorch 1.5.1", {"openvino": "2026.4.1", "executorch": "1.5.1"})
    store = _store(tmp_path / "one", [*RECORDS, before, after, xnn])
    publish.publish(store.load(), store.root)
    md = (store.root / "LEADERBOARD.md").read_text()
    assert "environment 1 of" not in md
    assert "Runtimes: executorch 1.5.1, openvino 2026.4.1." in md
    newer = _on_runtime(rec("minmax", "w8a8-pc", 0.75, "2026-01-01T00:00:07.000001+00:00"), "executorch-xnnpack",
                        "executorch 1.6.0", {"executorch": "1.6.0"})
    newer["config_hash"] += "-newer"
    store = _store(tmp_path / "two", [*RECORDS, xnn, newer])
    publish.publish(store.load(), store.root)
    md = (store.root / "LEADERBOARD.md").read_text()
    # the two versions' rows split off (one table each), the other runtimes' rows stay together
    assert "environment 3 of 3" in md and md.count("| minmax | w8a8-pc | executorch-xnnpack |") == 2
    assert md.count("mqbench 0.1.0, executorch 1.5.1.") == 1 and md.count("mqbench 0.1.0, executorch 1.6.0.") == 1


def test_unreadable_records_are_listed_by_name_and_left_out(tmp_path: Path) -> None:
    store = _store(tmp_path, RECORDS)
    newer_schema = {**rec("minmax", "w4a8-pc", 0.5, "2026-01-01T00:00:05.000001+00:00"),
                    "schema_version": SCHEMA_VERSION + 1}
    newer_mqbench = rec("minmax", "w6a8-pc", 0.6, "2026-01-01T00:00:06.000001+00:00")
    newer_mqbench["provenance"]["mqbench"] = "9.0.0"
    (store.records_dir / "future-schema.json").write_text(json.dumps(newer_schema))
    (store.records_dir / "future-mqbench.json").write_text(json.dumps(newer_mqbench))
    publish.publish(store.load(), store.root)
    md = (store.root / "LEADERBOARD.md").read_text()
    assert "w4a8-pc" not in md.split("## Left out")[0] and "w6a8-pc" not in md.split("## Left out")[0]
    left_out = md.split("## Left out")[1]
    assert re.search(r"\| future-schema\.json \| written by a newer mqbench \(schema 2 > 1\)", left_out)
    assert "| future-mqbench.json | written by a newer mqbench (9.0.0 > 0.1.0)" in left_out
    assert "2 file(s) in `records/` were left out" in md


def test_the_page_is_self_contained_with_sortable_filterable_tables(tmp_path: Path) -> None:
    store = _store(tmp_path, RECORDS)
    publish.publish(store.load(), store.root)
    page = (store.root / "index.html").read_text()
    # Nothing fetched at view time: no external image, script, frame or stylesheet (a link a reader may follow is fine).
    assert not re.search(r"""(src=|<link[^>]*href=)["']?(https?:)?//""", page)
    assert "<link" not in page and page.count('src="data:image/png;base64,') == 1
    # The model's accuracy table, then one table per paper of the Papers section. Two of the papers' settings have a
    # record here (Finkelstein et al.'s MobileNetV2 tf2ptq, float and naive per-tensor); every other row is "not run"
    # (and the section's introduction says so once).
    judged = (*papers.PAPERS, *papers.TOOLKIT_CLAIMS)
    tables = 1 + len(judged)
    assert page.count('class="sortable"') == tables and page.count('<input type="search" class="filter"') == tables
    assert page.count("not run") == sum(len(p.rows) for p in judged) - 2 + 1
    finkelstein = page.split('id="paper-finkelstein2019"')[1].split("</table>")[0]
    assert ">79.00<" in finkelstein and ">7.40<" in finkelstein
    table = page.split('class="sortable"')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + len(RECORDS)  # header + one row per record
    assert 'data-sort="0.074"' in table and 'data-type="num"' in table


def test_the_toolkits_section_ranks_each_runtimes_rows_with_mqbenchs_best_there(tmp_path: Path) -> None:
    records = [rec("fp32", "fp32", 0.79, "2026-01-01T00:00:01.000001+00:00", backend="openvino"),
               rec("minmax", "w8a8-pc", 0.78, "2026-01-01T00:00:02.000001+00:00", backend="openvino"),
               rec("cle", "w8a8-pc", 0.70, "2026-01-01T00:00:03.000001+00:00", backend="openvino"),
               rec("nncf:performance", "w8a8-pc", 0.785, "2026-01-01T00:00:04.000001+00:00", backend="openvino"),
               rec("nncf:mixed", "w8a8-pc", 0.75, "2026-01-01T00:00:05.000001+00:00", backend="openvino"),
               rec("minmax", "w8a8-pc", 0.77, "2026-01-01T00:00:06.000001+00:00", backend="ort-qdq")]
    for r in records:
        r["metrics"] = {"deployed": r["metrics"]["sim"]}
    records[3]["deployment"] = {"3x224x224": {"float_compute_ops": {"Conv": 22}}}
    publish.publish(_store(tmp_path, records).load(), tmp_path)
    md = (tmp_path / "LEADERBOARD.md").read_text()
    section = md[md.index("## Toolkits"):md.index("## Suite")]
    lines = [line for line in section.splitlines() if line.startswith("| w8a8-pc")]
    # openvino only (the ort-qdq block holds no toolkit row); best first; mqbench's best pipeline there, not cle
    assert [line.split(" | ")[1:4] for line in lines] == [
        ["openvino", "1", "nncf:performance"], ["openvino", "2", "mqbench: minmax"], ["openvino", "3", "nncf:mixed"]]
    assert "float ops: Conv x22" in lines[0] and "512 calibration images, 1300 evaluation images" in section
    assert md.index("## Toolkits") < md.index("## Suite imagenet")
