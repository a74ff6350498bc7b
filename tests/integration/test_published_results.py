"""``results/`` is a build product of ``results/records``: re-publishing the committed records reproduces the
committed files byte for byte (``mqbench leaderboard --publish`` after adding records, then commit both)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from mqbench.report import publish
from mqbench.store import Store
from tests.helpers import REPO

RESULTS = REPO / "results"
STALE = "results/ is stale or was edited by hand: run `mqbench leaderboard --publish` and commit what it writes"


@pytest.fixture(scope="module")
def republished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (RESULTS / "records").is_dir():
        pytest.fail("results/records is missing: the published leaderboard has no records")
    root = tmp_path_factory.mktemp("results")
    for sub in ("records", "attachments"):
        if (RESULTS / sub).is_dir():
            shutil.copytree(RESULTS / sub, root / sub)
    store = Store(root)
    publish.publish(store.load(), root, lambda r: store.attachment(r, "layerwise"))
    return root


def _without_images(page: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,...", page)


def _plots(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / publish.PLOTS_DIR).rglob("*") if p.is_file())


def test_republishing_the_committed_records_reproduces_the_text_outputs(republished: Path) -> None:
    for name in ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.json"):
        assert (republished / name).read_text() == (RESULTS / name).read_text(), f"{name}: {STALE}"
    page = (republished / "index.html").read_text()
    assert _without_images(page) == _without_images((RESULTS / "index.html").read_text()), f"index.html: {STALE}"
    assert _plots(republished) == _plots(RESULTS), f"plots/: {STALE}"


def test_republishing_reproduces_the_plots_byte_for_byte_with_the_same_matplotlib(republished: Path) -> None:
    import matplotlib
    from PIL import Image

    drawn_by = {Image.open(p).info.get("Software") for p in (RESULTS / publish.PLOTS_DIR).rglob("*.png")}
    if drawn_by != {f"matplotlib {matplotlib.__version__}"}:
        pytest.skip(f"the committed plots were drawn by {sorted(map(str, drawn_by))}, this is matplotlib "
                    f"{matplotlib.__version__}: their bytes may differ (the text outputs are compared anyway)")
    for rel in _plots(RESULTS):
        assert (republished / rel).read_bytes() == (RESULTS / rel).read_bytes(), f"{rel}: {STALE}"
    assert (republished / "index.html").read_bytes() == (RESULTS / "index.html").read_bytes(), f"index.html: {STALE}"
