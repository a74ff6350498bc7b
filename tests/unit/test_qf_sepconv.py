"""qf_sepconv: the conversion to the quantization-friendly block, its fine-tuning with L2 on the depthwise
weights, and how the runner supplies training to a method that declares it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from mqbench import harness
from mqbench.data import Split
from mqbench.errors import UsageError
from mqbench.methods import StepContext
from mqbench.methods.qf_sepconv import QFSepConv, QFSepConvConfig, to_quantization_friendly
from mqbench.models.mobilenet_v1 import MobileNetV1
from mqbench.models.qf_mobilenet_v1 import QFMobileNetV1
from mqbench.models.zoo import CIFAR_V1_BLOCKS
from mqbench.plugins import BUILTIN_PLUGINS, Plugins
from mqbench.report import leaderboard
from mqbench.store import Store
from mqbench.suites import QUICK
from tests.fake_plugins import Tiny, tiny_mobilenet_v1


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins(builtins=(*BUILTIN_PLUGINS, "tests.fake_plugins"), entry_points=False, disable=set())


def _random_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 3 + 0.1)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
    return model.eval()


def _without_depthwise_activation(model: MobileNetV1) -> nn.Module:
    """The reference function of the conversion: MobileNetV1 with the depthwise ReLU6 removed and ReLU for ReLU6."""
    ref = copy.deepcopy(model)
    for block in list(ref.features)[1:]:
        block[2], block[5] = nn.Identity(), nn.ReLU()
    ref.features[0][2] = nn.ReLU()
    return ref


@pytest.mark.parametrize("tf_same", [False, True])
def test_the_conversion_folds_the_depthwise_bn_exactly_and_loads_into_qf_mobilenet_v1(tf_same: bool) -> None:
    torch.manual_seed(0)
    model = _random_bn(MobileNetV1(10, 0.5, 1, CIFAR_V1_BLOCKS, tf_same=tf_same), 1)
    before = copy.deepcopy(model.state_dict())
    qf, counts = to_quantization_friendly(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got, want = qf(x), _without_depthwise_activation(model)(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert counts == {"blocks_converted": 13, "depthwise_relu6_removed": 13, "relu6_to_relu": 14}
    assert not any(isinstance(m, (nn.ReLU6, nn.BatchNorm2d)) for block in list(qf.features)[1:] for m in block[:2])
    QFMobileNetV1(10, 0.5, 1, CIFAR_V1_BLOCKS, tf_same=tf_same).load_state_dict(qf.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(before.values(), model.state_dict().values(), strict=True))


def test_a_model_without_mobilenet_v1_blocks_is_refused_by_name() -> None:
    with pytest.raises(UsageError, match="Tiny has none; use it with mobilenet_v1"):
        to_quantization_friendly(Tiny(10))


def _split(n: int) -> Split:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return Split(images, (images.float().mean((1, 2, 3)) > 127.5).long(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _depthwise_norm(model: nn.Module) -> float:
    return sum(float(block[0].weight.detach().norm()) ** 2 for block in list(model.features)[1:]) ** 0.5  # type: ignore


def test_fine_tuning_with_the_depthwise_l2_shrinks_the_depthwise_kernels_and_reports_its_cost() -> None:
    torch.manual_seed(0)
    model = _random_bn(tiny_mobilenet_v1(), 2)
    results = {}
    for l2 in (0.0, 5.0):
        ctx = StepContext(train=_split(256))
        config = QFSepConvConfig(epochs=2, batch_size=64, depthwise_l2=l2, weight_decay=0.0, channels_last=False)
        torch.manual_seed(0)
        results[l2] = (QFSepConv().transform(model, config, ctx), ctx)
    # Same seed, same data order: the only difference is the penalty on the depthwise kernels.
    assert _depthwise_norm(results[5.0][0]) < 0.9 * _depthwise_norm(results[0.0][0])
    cost = results[5.0][1].training["qf_sepconv"]
    assert cost["epochs"] == 2 and cost["train_images"] == 256 and cost["images_seen"] == 512
    assert cost["seconds"] > 0 and not cost["stopped_by_time_budget"] and len(cost["history"]) == 2
    assert results[5.0][1].notes["qf_sepconv"]["blocks_converted"] == 2


def test_a_training_budget_stops_the_fine_tuning_at_an_epoch_boundary() -> None:
    ctx = StepContext(train=_split(128), train_budget_s=1e-9)
    QFSepConv().transform(_random_bn(tiny_mobilenet_v1(), 3), QFSepConvConfig(epochs=3, batch_size=64), ctx)
    cost = ctx.training["qf_sepconv"]
    assert cost["epochs"] == 1 and cost["epochs_planned"] == 3 and cost["stopped_by_time_budget"]
    assert cost["time_budget_s"] == 1e-9


def test_fp32_combines_with_transform_steps_only(plugins: Plugins) -> None:
    steps = harness.parse_pipeline("qf_sepconv(epochs=1)+fp32", plugins)
    assert [s.name for s in steps] == ["qf_sepconv", "fp32"] and harness.Pipeline(tuple(steps)).trainers() == ["qf_sepconv"]
    for bad in ("fp32+minmax", "qf_sepconv+fp32+minmax"):
        with pytest.raises(UsageError, match="can only be combined with transform steps"):
            harness.parse_pipeline(bad, plugins)


def test_the_runner_supplies_the_train_split_and_budget_and_one_sweep_trains_once(
        plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    pipelines = ["qf_sepconv(epochs=1,train_limit=256,channels_last=false)+fp32",
                 "qf_sepconv(epochs=1,train_limit=256,channels_last=false)+minmax", "minmax",
                 "minmax+lsq_qat(crop_padding=0,train_limit=128)"]
    cells = harness.expand(plugins, QUICK, models=["tiny_test_mobilenet_v1"], quantizers=pipelines,
                          schemes=["w8a8-pt"], eval_limit=64, train_budget_s=600)
    assert [(c.scheme, c.train_budget_s) for c in cells] == [("fp32", 600), ("w8a8-pt", 600), ("w8a8-pt", None),
                                                             ("w8a8-pt", 600)]
    assert "train_budget_s" in harness.cell_config(cells[0], plugins)
    assert "train_budget_s" not in harness.cell_config(cells[2], plugins)  # a cell that does not train keeps its hash
    ws = harness.Workspace(plugins)
    assert [k[1] for k in ws.split_keys(cells[0])] == ["calib", "test", "train"]
    assert [k[1] for k in ws.split_keys(cells[2])] == ["calib", "test"]
    summary = harness.run(cells, Store(tmp_path / "results"), ws)
    records = {r["config"]["pipeline"]: r for r in summary.records}
    float_rec, quant_rec = records[cells[0].quantizer], records[cells[1].quantizer]
    assert float_rec["status"] == quant_rec["status"] == "ok"
    first, second = float_rec["training"]["qf_sepconv"], quant_rec["training"]["qf_sepconv"]
    assert first["epochs"] == 1 and first["train_images"] == 256 and first["time_budget_s"] == 600
    assert "reused_in_process" not in first and second["reused_in_process"] is True
    assert second["seconds"] == first["seconds"]  # the cost of the one training both cells used
    assert "transform:qf_sepconv" in float_rec["timings_s"] and "transform:qf_sepconv" not in quant_rec["timings_s"]
    assert float_rec["data"]["train"]["size"] > 256  # the split supplied; the step used its first 256 images
    assert "training" not in records["minmax"] and "train" not in records["minmax"]["data"]
    qat = records[cells[3].quantizer]  # a refine step that trains: its cost is in the record too
    assert qat["status"] == "ok" and qat["training"]["lsq_qat"]["images_seen"] == 128
    # The leaderboard counts the reused fine-tuning in the cost of the cell that reused it.
    method_s = {r["pipeline"]: r["method_s"] for r in leaderboard.rows_from_records(summary.records)}
    assert method_s[cells[1].quantizer] >= round(first["seconds"], 1)


def test_a_training_budget_must_be_positive(plugins: Plugins) -> None:
    with pytest.raises(UsageError, match="training budget must be a positive"):
        harness.expand(plugins, QUICK, models=["tiny_test_mobilenet_v1"], quantizers=["qf_sepconv+fp32"],
                      train_budget_s=0)
