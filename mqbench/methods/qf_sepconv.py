"""``qf_sepconv``: the quantization-friendly separable convolution (Sheng et al. 2018, "A
Quantization-Friendly Separable Convolution for MobileNets", arXiv 1803.08607), as a transform step that
trains.

The paper traces MobileNetV1's collapse under 8-bit quantization (70.50 -> 1.80 top-1, their Table 1) to
its separable block {depthwise, BN, ReLU6, pointwise, BN, ReLU6} and changes it (Section 3) to
{depthwise, pointwise, BN, ReLU}: no BatchNorm and no activation after the depthwise conv, ReLU instead of
ReLU6, and L2 regularisation of the depthwise weights; retrained, the model keeps 68.03 of its 70.77 at
8 bits. See :mod:`mqbench.models.qf_mobilenet_v1` for the reasons of each change.

This step turns a trained MobileNetV1 (``mobilenet_v1``, ``mobilenet_v1_cifar``, ``quick_mobilenet_v1``:
any model whose ``features`` are a stem and MobileNetV1 separable blocks) into that architecture and
fine-tunes it:

1. **Conversion** (:func:`to_quantization_friendly`). Per block, the depthwise BN's scale
   ``gamma / sigma`` is folded into the depthwise kernels; its shift ``t = beta + gamma (b - mu) / sigma``
   passes through the pointwise conv, which is linear once the ReLU6 between them is gone, and is absorbed
   by the pointwise BN (its running mean becomes ``mu - W_pw t``); the ReLU6 after the depthwise conv is
   removed and every other ReLU6 becomes ReLU. Only those two activation changes alter the function; the
   result has the key layout of ``qf_mobilenet_v1`` ({0 depthwise, 1 pointwise, 2 BN, 3 ReLU}), so its state
   dict loads there.
2. **Fine-tuning** (:func:`mqbench.train.train`: SGD with Nesterov momentum, one-cycle cosine schedule,
   flip and random-crop augmentation, seeded data order) on the train split the harness supplies, for
   ``epochs`` epochs or until the cell's training budget (``mqbench run --train-budget S``) is spent. The
   paper's L2 penalty ``lambda/2 * ||w_dw||^2`` on the depthwise weights is, for SGD, exactly weight decay
   ``lambda`` on them (``depthwise_l2``); the other weights keep ``weight_decay``.

What it cost (epochs, seconds, images, whether the budget stopped it, the per-epoch loss) is stored in the
record under ``training.qf_sepconv``; the float accuracy of the result is the cell ``qf_sepconv+fp32``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.errors import UsageError
from mqbench.methods import Method, MethodConfig, StepContext
from mqbench.registry import Registry


@dataclass(frozen=True)
class QFSepConvConfig(MethodConfig):
    version: ClassVar[int] = 1
    epochs: int = 2  # fine-tuning epochs over the train split (0: convert only, no training)
    lr: float = 0.02  # peak learning rate of the one-cycle schedule (a fine-tune: a fifth of training from scratch)
    batch_size: int = 128
    weight_decay: float = 5e-4  # of every weight but the depthwise kernels
    depthwise_l2: float = 5e-4  # the paper's L2 regularisation of the depthwise kernels (as weight decay)
    crop_padding: int = 4  # random-crop augmentation: pad each side, crop back (4 suits 32x32 CIFAR images)
    train_limit: int = 0  # fine-tune on the first N train images only (0: all)
    channels_last: bool = True  # train in the channels-last memory format (faster depthwise kernels on x86)

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be zero or positive, got {self.epochs}")
        if self.train_limit < 0:
            raise ValueError(f"train_limit must be zero (all) or positive, got {self.train_limit}")
        if self.depthwise_l2 < 0 or self.weight_decay < 0:
            raise ValueError("weight_decay and depthwise_l2 must be zero or positive")


def _is_separable_block(block: nn.Module) -> bool:
    """MobileNetV1's {0 depthwise conv, 1 BN, 2 ReLU6, 3 pointwise conv, 4 BN, 5 ReLU6}."""
    if not isinstance(block, nn.Sequential) or len(block) != 6:
        return False
    dw, bn1, act1, pw, bn2, act2 = block
    return (isinstance(dw, nn.Conv2d) and dw.groups == dw.in_channels == dw.out_channels and dw.groups > 1
            and isinstance(bn1, nn.BatchNorm2d) and isinstance(act1, (nn.ReLU6, nn.ReLU))
            and isinstance(pw, nn.Conv2d) and pw.kernel_size == (1, 1) and pw.groups == 1
            and isinstance(bn2, nn.BatchNorm2d) and isinstance(act2, (nn.ReLU6, nn.ReLU)))


@torch.no_grad()
def _convert_block(block: nn.Sequential) -> nn.Sequential:
    dw, bn1, _, pw, bn2, _ = block
    assert isinstance(dw, nn.Conv2d) and isinstance(pw, nn.Conv2d)
    assert isinstance(bn1, nn.BatchNorm2d) and isinstance(bn2, nn.BatchNorm2d)
    assert bn1.running_var is not None and bn1.running_mean is not None and bn2.running_mean is not None
    scale = bn1.weight / torch.sqrt(bn1.running_var + bn1.eps)
    dw_bias = dw.bias if dw.bias is not None else torch.zeros_like(scale)
    shift = bn1.bias + scale * (dw_bias - bn1.running_mean)
    new_dw = _without_bias(dw)
    new_dw.weight.mul_(scale.view(-1, 1, 1, 1))
    new_pw = _without_bias(pw)
    # BN2(W_pw (dw'(x) + t) + b_pw) = BN2 with its running mean lowered by W_pw t + b_pw, applied to W_pw dw'(x).
    moved = pw.weight.flatten(1) @ shift + (pw.bias if pw.bias is not None else 0.0)
    new_bn = nn.BatchNorm2d(bn2.num_features, eps=bn2.eps, momentum=bn2.momentum)
    new_bn.load_state_dict(bn2.state_dict())
    assert new_bn.running_mean is not None
    new_bn.running_mean.sub_(moved)
    return nn.Sequential(new_dw, new_pw, new_bn, nn.ReLU(inplace=True))


def _without_bias(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of ``conv`` (its class, so TF "SAME" padding is kept) without a bias."""
    new = copy.deepcopy(conv)
    new.bias = None
    return new


def to_quantization_friendly(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """``model`` (a MobileNetV1, unchanged) converted to the quantization-friendly block (the module
    docstring's step 1), and counts of what changed. UsageError when ``model`` has no MobileNetV1 blocks."""
    features = getattr(model, "features", None)
    blocks = list(features) if isinstance(features, nn.Sequential) else []
    separable = [i for i, b in enumerate(blocks) if _is_separable_block(b)]
    if not separable:
        raise UsageError(f"qf_sepconv converts MobileNetV1 separable blocks ({{depthwise, BN, ReLU6, pointwise, BN, "
                         f"ReLU6}} in model.features), and {type(model).__name__} has none; use it with mobilenet_v1, "
                         "mobilenet_v1_cifar or quick_mobilenet_v1")
    new = copy.deepcopy(model)
    assert isinstance(new.features, nn.Sequential)
    for i in separable:
        block = blocks[i]
        assert isinstance(block, nn.Sequential)
        new.features[i] = _convert_block(block)
    relu6 = 2 * len(separable)  # the converted blocks' two ReLU6: one removed, one now ReLU
    for name, module in list(new.named_modules()):
        if isinstance(module, nn.ReLU6):
            parent = new.get_submodule(name.rpartition(".")[0]) if "." in name else new
            setattr(parent, name.rpartition(".")[2], nn.ReLU(inplace=True))
            relu6 += 1
    return new.eval(), {"blocks_converted": len(separable), "depthwise_relu6_removed": len(separable),
                        "relu6_to_relu": relu6 - len(separable)}


class QFSepConv(Method):
    name = "qf_sepconv"
    stage = "transform"
    needs_training = True
    description = ("quantization-friendly separable convolution (Sheng et al. 2018): MobileNetV1 blocks become "
                   "{depthwise, pointwise, BN, ReLU}, then fine-tuned with L2 on the depthwise weights")
    config_type = QFSepConvConfig

    def transform(self, model: nn.Module, config: MethodConfig, ctx: StepContext) -> nn.Module:
        from mqbench.train import TrainConfig, train

        assert isinstance(config, QFSepConvConfig)
        converted, counts = to_quantization_friendly(model)
        ctx.notes[self.name] = counts
        if config.epochs == 0:
            return converted
        if ctx.train is None:
            raise UsageError("qf_sepconv fine-tunes on the train split, and the harness gave it none")
        split = ctx.train.head(config.train_limit or None)
        train_config = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                                   weight_decay=config.weight_decay, seed=ctx.seed, crop_padding=config.crop_padding,
                                   channels_last=config.channels_last, depthwise_weight_decay=config.depthwise_l2)
        result = train(converted, split, None, train_config, ctx.reporter, label="qf_sepconv fine-tune",
                       time_budget_s=ctx.train_budget_s)
        ctx.training[self.name] = {
            "epochs": result.epochs_done, "epochs_planned": config.epochs, "seconds": round(result.seconds, 3),
            "train_images": len(split), "images_seen": len(split) * result.epochs_done,
            "stopped_by_time_budget": result.stopped_by_time_budget, "time_budget_s": ctx.train_budget_s,
            "threads": torch.get_num_threads(), "history": result.history}
        return converted.eval()


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(QFSepConv())
