"""AdaRound's defining properties: weights end on the quantizer's grid, the learned rounding lowers the
layer's reconstruction error below nearest rounding, patch rows reproduce the convolution, and the
float mode still sees the float weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mqbench.data.synthetic import generate
from mqbench.layers import Conv2dSame
from mqbench.methods import StepContext
from mqbench.methods.adaround import AdaRound, AdaRoundConfig, beta_at, initial_v, rectified_sigmoid, round_layer
from mqbench.models.builtin import quick_mobilenet_v1
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.qsim import Quantizer, QuantSim
from mqbench.quant.reconstruction import LayerData, grouped_weight, layer_rows, patch_rows
from mqbench.schemes import parse_scheme


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 0.999), min_size=1, max_size=20))
def test_initial_v_starts_at_the_fractional_part(rest: list[float]) -> None:
    r = torch.tensor(rest)
    assert torch.allclose(rectified_sigmoid(initial_v(r)), r.clamp(1e-4, 1 - 1e-4), atol=1e-5)


def test_beta_anneals_after_warmup() -> None:
    config = AdaRoundConfig(iterations=100, warmup=0.2)
    assert beta_at(19, config) is None
    assert beta_at(20, config) == 20.0
    assert abs(beta_at(99, config) - 2.0) < 0.3  # type: ignore[operator]


def test_patch_rows_reproduce_the_convolution() -> None:
    torch.manual_seed(0)
    for conv in (nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.Conv2d(6, 6, 3, padding=1, groups=6),
                 nn.Conv2d(6, 4, 1), Conv2dSame(6, 4, 3, stride=2)):
        x = torch.randn(2, 6, 9, 9)
        conv.tf_same = isinstance(conv, Conv2dSame)  # type: ignore[assignment]
        out = conv(x)
        flat = out.flatten(2)
        positions = torch.randperm(flat.shape[2])[:5].repeat(2, 1)
        rows = layer_rows(patch_rows(conv, x, positions), grouped_weight(conv), conv.bias)
        expected = torch.gather(flat, 2, positions.unsqueeze(1).expand(-1, flat.shape[1], -1)).permute(0, 2, 1)
        assert torch.allclose(rows, expected.reshape(-1, flat.shape[1]), atol=1e-5)


def test_learned_rounding_beats_nearest_and_stays_on_the_grid() -> None:
    torch.manual_seed(0)
    weight = torch.randn(1, 16, 32)
    quantizer = Quantizer("layer", "weight", 4, True, True, False, 0)
    quantizer.set_range(-weight[0].abs().amax(1), weight[0].abs().amax(1))
    # Correlated inputs (rank 8 in 32 dimensions): rounding errors of different weights can cancel, which
    # nearest rounding ignores; with independent inputs nearest rounding would already be optimal.
    x = (torch.randn(4096, 8) @ torch.randn(8, 32)).unsqueeze(1)
    targets = F.relu(layer_rows(x, weight, None))
    data = LayerData("layer", weight, None, quantizer, x, targets, F.relu)
    codes, stats = round_layer(data, AdaRoundConfig(iterations=400, batch_rows=512), torch.Generator().manual_seed(0))
    assert torch.equal(codes, codes.round()) and codes.min() >= -8 and codes.max() <= 7
    # Each code is the floor or the ceiling of the scaled weight (rounding, never a jump to another level).
    scaled = weight / quantizer.scale.view(1, -1, 1)
    assert bool(((codes == scaled.floor()) | (codes == scaled.ceil())).all())
    assert stats["loss_adaround"] < 0.8 * stats["loss_nearest"]
    assert 0 < stats["changed_roundings"] < 0.5


def test_adaround_refine_puts_weights_on_grid_and_keeps_float_mode() -> None:
    torch.manual_seed(0)
    model = quick_mobilenet_v1(10).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # an untrained net with unit BN outputs ~0; give it trained-like statistics
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.exp(torch.randn(m.num_features, generator=g))
            m.running_var.data = torch.rand(m.num_features, generator=g) * 0.1 + 0.01
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
    calib = generate(0, "calib", 32)
    qsim = QuantSim.from_float(model, parse_scheme("w4a8-pc"))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, calib, minmax_observer)
    x = calib.normalize(calib.images)
    with torch.no_grad():
        nearest = qsim(x)
        with qsim.float_mode():
            ref = qsim(x)
    floats = {name: qsim.layer_weight(name).detach().clone() for name in qsim.weight_quantizers}
    ctx = StepContext()
    AdaRound().refine(qsim, model, calib, AdaRoundConfig(iterations=200, images=32, positions=16), ctx)
    for name, q in qsim.weight_quantizers.items():
        w = qsim.layer_weight(name).detach()
        scale = q.scale.view(-1, *([1] * (w.dim() - 1)))  # type: ignore[union-attr]
        assert torch.allclose(w / scale, (w / scale).round(), atol=1e-4), name
        assert torch.equal(q(w), w), name  # re-quantizing gives back the same values: every backend agrees
    with torch.no_grad():
        learned = qsim(x)
        with qsim.float_mode():
            assert torch.equal(qsim(x), ref)
            for name in qsim.weight_quantizers:
                assert torch.equal(qsim.layer_weight(name), floats[name])
    assert F.mse_loss(learned, ref) < F.mse_loss(nearest, ref)
    notes = ctx.notes["adaround"]
    assert set(notes["layers"]) == set(qsim.weight_quantizers)


def test_each_layers_reconstruction_inputs_equal_a_full_forward_pass_after_the_layers_before_it_change() -> None:
    """layer_data computes each layer's quantized input from the previous layer on (the network runs once in all):
    bit for bit the input a whole forward pass of the quantized network gives once the earlier layers have changed,
    on a network with residual additions, over batches of unequal size."""
    from mqbench.quant.reconstruction import layer_data
    from mqbench.testing.models import conformance_mobilenet_v2

    torch.manual_seed(0)
    calib = generate(0, "calib", 40)
    qsim = QuantSim.from_float(conformance_mobilenet_v2().eval(), parse_scheme("w4a8-pc"))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, calib, minmax_observer)
    x = calib.normalize(calib.images[:40])
    generator = torch.Generator().manual_seed(2)
    seen = 0
    for data in layer_data(qsim, calib, images=40, positions=8, batch_size=16):
        layer = qsim.model.get_submodule(data.name)
        captured: list[torch.Tensor] = []
        handle = layer.register_forward_pre_hook(lambda m, inp, seen=captured: seen.append(inp[0]))
        with torch.no_grad():
            qsim(x)
        handle.remove()
        # the rows at the sampled positions are rows of the full pass's patches
        full = F.unfold(captured[0], layer.kernel_size, layer.dilation, layer.padding, layer.stride) \
            if isinstance(layer, nn.Conv2d) else captured[0].reshape(40, -1, 1)
        patches = full.permute(0, 2, 1).reshape(40, -1, full.shape[1])  # (N, L, C*k*k)
        rows = data.x_rows.reshape(40, -1, data.x_rows.shape[1] * data.x_rows.shape[2])
        assert all(any(torch.equal(row, p) for p in patches[i]) for i in range(40) for row in rows[i]), data.name
        # change this layer as a fit would: the next layer's inputs must follow
        weight = qsim.layer_weight(data.name)
        qsim.set_deployed_weight(data.name, weight + 0.05 * torch.randn(weight.shape, generator=generator))
        seen += 1
    assert seen == len(qsim.weight_quantizers)
