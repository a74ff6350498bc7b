"""Weights from a file, a URL (loopback HTTP server) and the hub; bad checkpoints refused clearly."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mqbench.data.synthetic import SyntheticShapes
from mqbench.errors import MqbenchError, UsageError
from mqbench.models import FileWeights, HubWeights, ModelSpec, UrlWeights
from mqbench.models.weights import load_into, resolve_weights
from tests.fake_plugins import Tiny


def _resolve(weights):
    spec = ModelSpec("tiny", Tiny, weights=(weights,))
    return resolve_weights(spec, weights, lambda _: SyntheticShapes(), lambda d, s: None)  # type: ignore[arg-type,return-value]


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, str, dict]:
    torch.manual_seed(0)
    state = {"best_prec1": 1.0, "state_dict": {f"module.{k}": v for k, v in Tiny().state_dict().items()}}
    path = tmp_path / "served" / "tiny-ckpt.th"
    path.parent.mkdir()
    torch.save(state, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), state


@pytest.fixture
def server(checkpoint) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(checkpoint[0].parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


ADAPT = {"state_dict_key": "state_dict", "rename": (("module.", ""),)}


def test_url_download_verified_cached_and_loaded(server: str, checkpoint, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    path, sha, state = checkpoint
    w = UrlWeights("w", sha256=sha, url=f"{server}/tiny-ckpt.th", **ADAPT)  # type: ignore[arg-type]
    resolved = _resolve(w)
    assert resolved.sha256 == sha and resolved.source.startswith("url:")
    model = Tiny()
    load_into(model, resolved.state_dict, "test weights")
    assert torch.equal(model.classifier.weight, state["state_dict"]["module.classifier.weight"])
    path.unlink()  # the second resolution uses the download cache, not the server
    assert _resolve(w).sha256 == sha


def test_url_download_with_a_wrong_checksum_leaves_nothing(server: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    w = UrlWeights("w", sha256="0123456789abcdef", url=f"{server}/tiny-ckpt.th", **ADAPT)  # type: ignore[arg-type]
    with pytest.raises(MqbenchError, match="sha256"):
        _resolve(w)
    downloads = tmp_path / "cache" / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir())


def test_url_without_checksum_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    with pytest.raises(MqbenchError, match="without a sha256"):
        _resolve(UrlWeights("w", url="http://127.0.0.1:1/x.pth"))


def test_file_weights_relative_to_the_data_dir_and_sha_checked(checkpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    path, sha, _ = checkpoint
    monkeypatch.setenv("MQBENCH_DATA", str(path.parent.parent))
    ok = FileWeights("w", sha256=sha, path="served/tiny-ckpt.th", **ADAPT)  # type: ignore[arg-type]
    assert set(_resolve(ok).state_dict) == set(Tiny().state_dict())
    with pytest.raises(MqbenchError, match="fail their sha256 check"):
        _resolve(FileWeights("w", sha256="ffffffff", path="served/tiny-ckpt.th", **ADAPT))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"expects .*served/missing\.pth, which does not exist"):
        _resolve(FileWeights("w", path="served/missing.pth"))


def test_hub_weights_go_through_hf_hub_download(checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    path, sha, _ = checkpoint
    calls = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None):  # type: ignore[no-untyped-def]
        calls.append((repo_id, filename, revision))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    w = HubWeights("w", sha256=sha, repo_id="org/tiny", filename="tiny-ckpt.th", revision="v1", **ADAPT)  # type: ignore[arg-type]
    resolved = _resolve(w)
    assert calls == [("org/tiny", "tiny-ckpt.th", "v1")] and resolved.source == "hub:org/tiny/tiny-ckpt.th@v1"


def test_shape_mismatch_names_the_first_key_and_both_shapes() -> None:
    state = Tiny().state_dict()
    state["features.0.weight"] = torch.zeros(8, 3, 5, 5)
    with pytest.raises(MqbenchError, match=r"'features\.0\.weight' has shape \(8, 3, 5, 5\) in the checkpoint "
                                           r"but \(8, 3, 3, 3\) in the model"):
        load_into(Tiny(), state, "weights x")
    del state["classifier.bias"]
    with pytest.raises(MqbenchError, match=r"1 missing keys \(first 'classifier\.bias'\)"):
        load_into(Tiny(), state, "weights x")


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint\n", b"PK\x03\x04truncated"])
def test_truncated_or_foreign_files_are_refused(tmp_path: Path, content: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad.pth").write_bytes(content)
    monkeypatch.setenv("MQBENCH_DATA", str(tmp_path))
    with pytest.raises(MqbenchError, match="cannot load weights"):
        _resolve(FileWeights("w", path="bad.pth"))


def test_truncated_real_checkpoint_is_refused(checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = checkpoint
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    monkeypatch.setenv("MQBENCH_DATA", str(tmp_path))
    with pytest.raises(MqbenchError, match="cannot load weights"):
        _resolve(FileWeights("w", path="cut.pth"))
