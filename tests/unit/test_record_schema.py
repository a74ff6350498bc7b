"""The record schema (issue 23, defect 3): a record either fails validation, naming the field, or every renderer reads
it without an exception. Checked on the committed records and on random corruptions of them."""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from mqbench.errors import NonFiniteOutputError
from mqbench.metrics import Evaluation
from mqbench.record_schema import RECORD_SCHEMA, check, problem
from mqbench.report import layerwise, leaderboard
from mqbench.store import LoadResult, Store, validate
from tests.helpers import REPO

COMMITTED = sorted((REPO / "results" / "records").glob("*.json"))


def _sample() -> list[dict[str, Any]]:
    """A few committed records of every shape: with latency, with a layer-wise summary, a training step, skipped."""
    records = [json.loads(p.read_text()) for p in COMMITTED]
    picks = {}
    for r in records:
        for key in ("latency", "layerwise", "training", "agreement_integer_sim", "deployment"):
            if key in r and key not in picks:
                picks[key] = r
        picks.setdefault(r["status"], r)
    return list(picks.values())


SAMPLE = _sample()


def render_all(records: list[dict[str, Any]]) -> None:
    loaded = LoadResult(records=records)
    leaderboard.render_markdown(loaded)
    leaderboard.render_csv(loaded)
    leaderboard.render_json(loaded)
    leaderboard.print_rich(loaded, Console(file=io.StringIO(), width=200))
    layerwise.error_rows(records)


def test_every_committed_record_conforms() -> None:
    assert len(COMMITTED) > 50
    assert [(p.name, problem(json.loads(p.read_text()))) for p in COMMITTED if problem(json.loads(p.read_text()))] == []


def test_the_schema_is_json_schema_that_jsonschema_agrees_with() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(RECORD_SCHEMA)
    validator = jsonschema.Draft202012Validator(RECORD_SCHEMA)
    for r in SAMPLE:
        assert list(validator.iter_errors(r)) == []
        broken = {**r, "metrics": "oops"}
        assert list(validator.iter_errors(broken)) and check(broken, RECORD_SCHEMA)


# A value of each JSON kind, for replacing a field.
WRONG = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(max_size=4), st.just([]), st.just([1, "x"]), st.just({}), st.just({"value": "x"}))


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def corrupted(draw: st.DrawFn) -> dict[str, Any]:
    record = copy.deepcopy(draw(st.sampled_from(SAMPLE)))
    path = draw(st.sampled_from([p for p in _paths(record) if p[0] != "metrics" or len(p) < 8]))
    target = record
    for key in path[:-1]:
        target = target[key]
    if draw(st.booleans()) and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = draw(WRONG)
    return record


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_a_corrupted_record_is_refused_or_renders(record: dict[str, Any]) -> None:
    try:
        json.dumps(record, allow_nan=False)
    except ValueError:  # NaN or inf somewhere: never a readable record
        assert validate(record) is not None
        return
    if validate(record) is None:
        render_all([record])  # must not raise


def test_problems_name_the_field() -> None:
    r = copy.deepcopy(SAMPLE[0])
    r["metrics"] = "oops"
    assert problem(r) == "field 'metrics' is a str, expected object"
    r = copy.deepcopy(SAMPLE[0])
    r["config"] = {}
    assert problem(r) == "field 'config' lacks the required field 'model'"
    r = copy.deepcopy(next(x for x in SAMPLE if x["status"] == "ok"))
    which = next(iter(r["metrics"]))
    r["metrics"][which]["accuracy"]["top1"]["value"] = math.nan
    assert problem(r) == f"field 'metrics.{which}.accuracy.top1.value' is nan (not a finite number)"
    r["metrics"][which]["accuracy"]["top1"]["value"] = 0.5
    assert "says 0.5 but" in (problem(r) or "")


def test_a_record_over_non_finite_values_cannot_be_stored(tmp_path: Path) -> None:
    record = copy.deepcopy(next(x for x in SAMPLE if x["status"] == "ok"))
    which = next(iter(record["metrics"]))
    record["metrics"][which]["accuracy"]["top1"]["value"] = math.inf
    with pytest.raises(ValueError, match="refusing to store an invalid record"):
        Store(tmp_path).append(record)
    assert not (tmp_path / "records").exists() or not list((tmp_path / "records").iterdir())


def test_an_evaluation_refuses_non_finite_logits_naming_the_count_and_the_evaluation() -> None:
    logits = torch.zeros(5, 3)
    logits[1, 2] = math.nan
    logits[3, 0] = math.inf
    with pytest.raises(NonFiniteOutputError, match="on 2 of 5 images in the deployed evaluation"):
        Evaluation(logits, torch.zeros(5, dtype=torch.int64), "deployed")
    assert Evaluation(torch.zeros(5, 3), torch.zeros(5, dtype=torch.int64)).logits.shape == (5, 3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_a_corrupted_record_is_refused_or_publishes(record: dict[str, Any]) -> None:
    import tempfile

    from mqbench.report import publish

    if validate(record) is None:
        with tempfile.TemporaryDirectory() as folder:
            sections = publish.build_page(LoadResult(records=[record]), None, Path(folder))
            publish.render_markdown(sections)
            publish.render_html(sections, Path(folder))
