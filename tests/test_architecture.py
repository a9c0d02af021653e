"""The worked examples of docs/architecture.md: a new background, selection scheme and metric
are each one class or function plus one registry line."""

import numpy as np
import torch
from torch import nn

import marionette.eval.evaluation as evaluation_module
from marionette.config import Config
from marionette.core import BACKGROUNDS, SELECTIONS, MarioNette, ModelConfig, Selection
from marionette.data import Dataset, generate
from marionette.eval import METRICS, Metric, evaluate, summary_keys
from marionette.step import build_optimizers

SMALL = dict(height=32, width=32, layer_size=4, num_sprites=4, dim_z=16)


class GradientBackground(nn.Module):
    """A learned vertical gradient between two colors (the docs' example)."""

    own_learning_rate = True  # trained at lr_bg in its own optimizer
    per_frame = False  # the same for every frame

    def __init__(self, height: int) -> None:
        super().__init__()
        self.ends = nn.Parameter(torch.zeros(2, 3))
        self.register_buffer("ramp", torch.linspace(0, 1, height)[:, None])

    @classmethod
    def from_config(cls, config, sample):  # sample: training frames or None
        return cls(config.height)

    def forward(self, frames):
        top, bottom = torch.sigmoid(self.ends)
        image = top[:, None, None] + (bottom - top)[:, None, None] * self.ramp
        return image.expand(frames.shape[0], 3, -1, frames.shape[-1])


def nearest_selection(queries, dict_codes, sprites, windows, temperature):
    """Logits from the negative squared distance of query and dictionary code."""
    logits = -torch.cdist(queries.flatten(0, -2), dict_codes).pow(2)
    return Selection(logits.reshape(*queries.shape[:-1], -1), None)


def test_a_new_background(monkeypatch):
    monkeypatch.setitem(BACKGROUNDS, "gradient", GradientBackground)
    config = Config().replace(**SMALL, background="gradient")
    model = MarioNette(config.model)
    out = model(torch.rand(2, 1, 3, 32, 32))
    assert out.background.shape == (2, 1, 3, 32, 32)
    optimizers = build_optimizers(model, config)
    assert (
        len(optimizers) == 2 and optimizers[1].param_groups[0]["params"][0] is model.background.ends
    )


def test_a_new_selection_scheme(monkeypatch):
    monkeypatch.setitem(SELECTIONS, "nearest", nearest_selection)
    model = MarioNette(ModelConfig(**SMALL, selection="nearest"))
    out = model(torch.rand(2, 1, 3, 32, 32))
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(out.weights.shape[:-1]))


def test_a_new_metric(monkeypatch):
    def boxes_per_frame(objects, view):
        return {"boxes_per_frame": len(objects) / max(len(objects.names), 1)}

    metric = Metric("objects per frame", boxes_per_frame, True, ("boxes_per_frame",), ("all",))
    monkeypatch.setattr(evaluation_module, "METRICS", (*METRICS, metric))
    assert "all/boxes_per_frame" in summary_keys()
    data = generate("tiny", "test", num_clips=1)
    metrics = evaluate(
        MarioNette(ModelConfig(**SMALL)), Dataset(data.frames, data.groundtruth, None, {})
    )
    assert np.isclose(metrics["all"]["boxes_per_frame"], metrics["objects_per_frame"])
