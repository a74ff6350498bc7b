"""The training loop's checkpoints, time budget and augmentation (tiny model, a few steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mqbench.data import Split
from mqbench.errors import MqbenchError
from mqbench.train import TrainConfig, distillation_loss, load_checkpoint, random_crop, train
from tests.fake_plugins import Tiny


def _split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = (images.float().mean((1, 2, 3)) > 127.5).long()  # learnable: brightness
    return Split(images, labels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _state(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.clone() for t in model.state_dict().values()]


def test_a_run_resumed_from_a_checkpoint_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    data, test = _split(256, 0), _split(64, 1)
    config = TrainConfig(epochs=3, batch_size=32, crop_padding=2, label_smoothing=0.1)
    torch.manual_seed(0)
    whole = Tiny(2)
    reference = train(whole, data, test, config)
    # A run stopped after epoch 1 leaves the checkpoint a kill during epoch 2 would leave.
    ckpt = tmp_path / "run.ckpt"
    torch.manual_seed(0)
    first = train(Tiny(2), data, test, config, checkpoint=ckpt, time_budget_s=1e-9)
    assert first.epochs_done == 1 and torch.load(ckpt, weights_only=True)["epoch"] == 1
    torch.manual_seed(123)  # whatever the new process's state, the checkpoint restores it
    resumed = Tiny(2)
    result = train(resumed, data, test, config, checkpoint=ckpt)
    assert result.resumed_from_epoch == 1 and result.epochs_done == 3
    assert all(torch.equal(a, b) for a, b in zip(_state(resumed), _state(whole), strict=True))
    assert [h["test_top1"] for h in result.history] == [h["test_top1"] for h in reference.history]


def test_a_time_budget_stops_at_an_epoch_boundary_and_says_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = train(Tiny(2), _split(128, 0), None, TrainConfig(epochs=4, batch_size=32), time_budget_s=1e-9,
                   checkpoint=tmp_path / "c.ckpt")
    assert result.stopped_by_time_budget and result.epochs_done == 1 and len(result.history) == 1
    assert torch.load(tmp_path / "c.ckpt", weights_only=True)["epoch"] == 1


def test_a_checkpoint_of_another_config_or_a_corrupt_one_is_refused_by_name(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.ckpt"
    torch.manual_seed(0)
    train(Tiny(2), _split(64, 0), None, TrainConfig(epochs=1, batch_size=32), checkpoint=ckpt)
    with pytest.raises(MqbenchError, match=r"another training config \(epochs=1 there, 2 here\).*delete it"):
        load_checkpoint(ckpt, TrainConfig(epochs=2, batch_size=32))
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(MqbenchError, match=r"cannot read the training checkpoint .*delete it"):
        load_checkpoint(ckpt, TrainConfig(epochs=1, batch_size=32))


@settings(max_examples=30, deadline=None)
@given(padding=st.integers(0, 4), seed=st.integers(0, 2**16), n=st.integers(1, 5))
def test_random_crop_returns_a_window_of_the_padded_image(padding: int, seed: int, n: int) -> None:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, 3, 6, 7), dtype=torch.uint8, generator=g)
    out = random_crop(images, padding, torch.Generator().manual_seed(seed))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    for i in range(n):
        windows = [padded[i, :, y:y + 6, x:x + 7] for y in range(2 * padding + 1) for x in range(2 * padding + 1)]
        assert any(torch.equal(out[i], w) for w in windows)
    if padding == 0:
        assert torch.equal(out, images)


def test_bad_training_configs_are_refused() -> None:
    for kwargs, message in (({"epochs": 0}, "epochs"), ({"crop_padding": -1}, "crop_padding"),
                            ({"label_smoothing": 1.0}, "label_smoothing"), ({"lr": 0.0}, "lr"),
                            ({"distill_weight": 1.5}, "distill_weight"), ({"distill_temperature": 0.0}, "temperature")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**kwargs)


def test_depthwise_weights_get_their_own_weight_decay_when_asked() -> None:
    from mqbench.models.families import FamilyCNN
    from mqbench.train import is_depthwise, parameter_groups

    net = FamilyCNN(True, 8, 3)
    (everything,) = parameter_groups(net, TrainConfig())
    assert len(everything["params"]) == len(list(net.parameters()))
    rest, depthwise = parameter_groups(net, TrainConfig(depthwise_weight_decay=0.0))
    expected = [m.weight for m in net.modules() if is_depthwise(m)]
    assert len(expected) == 3 and depthwise["weight_decay"] == 0.0
    assert [id(w) for w in depthwise["params"]] == [id(w) for w in expected]
    assert len(rest["params"]) + len(expected) == len(list(net.parameters()))
    # Without decay and without gradient, SGD leaves the depthwise weights alone; the others shrink.
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    opt = torch.optim.SGD(parameter_groups(net, TrainConfig(depthwise_weight_decay=0.0)), lr=0.1, weight_decay=0.5)
    before = [w.clone() for w in expected]
    stem = net.features[0][0].weight.clone()
    (net(x).sum() * 0).backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, expected, strict=True))
    assert not torch.equal(stem, net.features[0][0].weight)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), weight=st.floats(0.0, 1.0), temperature=st.floats(0.5, 8.0))
def test_the_distillation_loss_mixes_cross_entropy_and_the_scaled_kl_to_the_teacher(seed: int, weight: float,
                                                                                  temperature: float) -> None:
    g = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g) * 3
    labels = torch.randint(0, 5, (6,), generator=g)
    ce = torch.nn.functional.cross_entropy(student, labels)
    p = torch.softmax(teacher / temperature, 1)
    kl = (p * (p.log() - torch.log_softmax(student / temperature, 1))).sum(1).mean() * temperature ** 2
    got = distillation_loss(student, teacher, labels, weight, temperature)
    assert torch.allclose(got, (1 - weight) * ce + weight * kl, rtol=1e-4, atol=1e-5)
    # A student that predicts what the teacher does has no soft loss left.
    assert float(distillation_loss(teacher, teacher, labels, 1.0, temperature)) == pytest.approx(0.0, abs=1e-5)


class _Contrarian(torch.nn.Module):
    """A teacher that calls bright images class 0 (the labels say 1): its logits are +-scale * mean brightness."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([m, -m], 1) * self.scale


def test_a_student_distilled_from_a_teacher_learns_its_predictions_and_the_teacher_stays() -> None:
    data = _split(256, 0)
    teacher = _Contrarian()
    x = data.normalize(data.images)
    with torch.no_grad():
        assert float((teacher(x).argmax(1) == data.labels).float().mean()) < 0.05  # it contradicts the labels
    agreement = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(1)
        student = Tiny(2)
        train(student, data, None, TrainConfig(epochs=4, batch_size=32, distill_weight=weight),
              teacher=teacher if weight else None)
        with torch.no_grad():
            agreement[weight] = float((student.eval()(x).argmax(1) == teacher(x).argmax(1)).float().mean())
    assert float(teacher.scale) == 10.0 and teacher.scale.grad is None
    # Measured: trained on the labels the student agrees with the teacher on 0.31 of the images, distilled on 0.71.
    assert agreement[0.0] < 0.45 and agreement[1.0] > 0.6, agreement
    with pytest.raises(ValueError, match="both a teacher and a distill_weight"):
        train(Tiny(2), data, None, TrainConfig(epochs=1, batch_size=32), teacher=teacher)
