"""A plugin whose registration hook registers a model of its own, then one that collides with a built-in."""

from __future__ import annotations

from mqbench import hookimpl
from mqbench.models import ModelSpec, TrainConfig, TrainedWeights
from tests.fake_plugins import Tiny


@hookimpl
def mqbench_register_models(register):  # type: ignore[no-untyped-def]
    weights = (TrainedWeights("synthetic", train=TrainConfig(epochs=1)),)
    register(ModelSpec("aaa_first_of_colliding", Tiny, "registered before the collision", "plain_cnn", 32, weights))
    register(ModelSpec("quick_cnn", Tiny, "collides with the built-in quick_cnn", "plain_cnn", 32, weights))
