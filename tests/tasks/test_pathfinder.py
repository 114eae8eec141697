"""Pathfinder: label semantics from the recorded geometry, clearances, curve shape, rendering, tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sessa.tasks import IGNORE_INDEX, get_task
from sessa.tasks.pathfinder import PathfinderTask, pathfinder_vocab, save_example_grid, segment_distance


@pytest.fixture(scope="module")
def examples():
    cfg = PathfinderTask()
    return cfg, cfg.generate(60, np.random.default_rng(0))


def _ends(curve: np.ndarray) -> np.ndarray:
    return np.stack([curve[0, 0], curve[-1, 1]])  # start of the first paddle, end of the last


def _curve_of(point: np.ndarray, curves: list[np.ndarray]) -> list[int]:
    return [i for i, c in enumerate(curves) if np.isclose(_ends(c), point).all(-1).any()]


def test_label_is_whether_both_markers_end_the_same_curve(examples):
    cfg, exs = examples
    for ex in exs:
        owners = [_curve_of(m, ex.curves) for m in ex.markers]
        assert all(len(o) == 1 for o in owners), "each marker sits on exactly one curve end"
        connected = owners[0][0] == owners[1][0]
        assert connected == bool(ex.label)
        assert not np.allclose(ex.markers[0], ex.markers[1])
        # markers are on the two target curves, never on a distractor
        assert owners[0][0] in (0, 1) and owners[1][0] in (0, 1)


def test_markers_and_curves_keep_their_clearances(examples):
    cfg, exs = examples
    half = cfg.paddle_thickness / 2
    for ex in exs:
        owners = [_curve_of(m, ex.curves)[0] for m in ex.markers]
        for i, a in enumerate(ex.curves):
            for j, b in enumerate(ex.curves[i + 1 :], start=i + 1):
                d = segment_distance(a[:, None, 0], a[:, None, 1], b[None, :, 0], b[None, :, 1])
                assert d.min() >= 2 * half + cfg.margin - 1e-9, (i, j)  # curves never touch or cross
        for marker, owner in zip(ex.markers, owners, strict=True):
            for k, c in enumerate(ex.curves):
                if k != owner:
                    d = segment_distance(marker, marker, c[:, 0], c[:, 1])
                    assert d.min() >= cfg.marker_radius + half + cfg.margin - 1e-9


def test_curve_shape_follows_the_paddle_rules(examples):
    cfg, exs = examples
    lo, hi = cfg.padding, cfg.image_size - cfg.padding
    for ex in exs:
        lengths = [len(c) for c in ex.curves]
        assert lengths == [14, 14] + [4] * 5
        for c in ex.curves:
            assert np.allclose(np.linalg.norm(c[:, 1] - c[:, 0], axis=-1), cfg.paddle_length)
            assert np.allclose(np.linalg.norm(c[1:, 0] - c[:-1, 1], axis=-1), cfg.margin)  # dashes
            assert ((c >= lo) & (c <= hi)).all()
            d = c[:, 1] - c[:, 0]
            cos = (d[1:] * d[:-1]).sum(-1) / cfg.paddle_length**2
            assert (cos >= math.cos(math.pi / 2 / cfg.continuity) - 1e-9).all()  # turns <= 90 degrees
        start_gap = np.linalg.norm(ex.curves[0][0, 0] - ex.curves[1][0, 0])
        assert start_gap == pytest.approx(cfg.seed_distance)


def test_rendering_is_bright_on_markers_and_dark_away_from_the_geometry(examples):
    cfg, exs = examples
    centres = np.stack(np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5, indexing="xy"), -1)  # (y, x, 2)
    for ex in exs[:20]:
        assert ex.image.shape == (32, 32) and ex.image.min() >= 0 and ex.image.max() <= 1
        for m in ex.markers:
            assert ex.image[int(m[1]), int(m[0])] == 1.0
        paddles = np.concatenate(ex.curves)
        d_paddle = segment_distance(
            centres[..., None, :], centres[..., None, :], paddles[:, 0], paddles[:, 1]
        )
        d_marker = np.linalg.norm(centres[..., None, :] - ex.markers, axis=-1)
        far = (d_paddle.min(-1) > cfg.paddle_thickness / 2 + 0.75) & (
            d_marker.min(-1) > cfg.marker_radius + 0.75
        )
        assert (ex.image[far] == 0).all()
        near = d_paddle.min(-1) < 0.05  # a pixel centre on a paddle is mostly covered
        assert (ex.image[near] > 0.3).all()


def test_tokens_labels_and_balance():
    data = PathfinderTask(n_train=40, n_valid=10, n_test=11).build(seed=0)
    vocab = pathfinder_vocab(256)
    assert data.vocab == vocab and data.pad_id == vocab.index("<pad>")
    for name, split in data.splits.items():
        n = len(split)
        assert split.inputs.shape == (n, 1025)
        assert (split.inputs[:, :1024] < 256).all() and (split.inputs[:, -1] == vocab.index("<cls>")).all()
        assert (split.targets[:, :-1] == IGNORE_INDEX).all()
        assert torch.equal(split.targets[:, -1], vocab.index("<disconnected>") + split.meta["label"])
        assert split.meta["label"].sum().item() == n // 2, name  # balanced (odd n: one extra 0)
        assert (split.lengths == 1025).all()


def test_quantisation_levels_and_determinism():
    cfg = PathfinderTask(n_train=6, n_valid=0, n_test=0, levels=4)
    a, b = cfg._build(0), cfg._build(0)
    assert torch.equal(a.splits["train"].inputs, b.splits["train"].inputs)
    pixels = a.splits["train"].inputs[:, :1024]
    assert set(pixels.unique().tolist()) <= {0, 1, 2, 3} and 3 in pixels.tolist()[0]
    c = cfg._build(1)
    assert not torch.equal(a.splits["train"].inputs, c.splits["train"].inputs)


def test_easier_levels_use_more_and_shorter_distractors():
    cfg = PathfinderTask(contour_length=6)
    assert (cfg.distractor_paddles, cfg.n_distractors) == (2, 10)
    ex = cfg.generate(4, np.random.default_rng(0))
    assert all([len(c) for c in e.curves] == [6, 6] + [2] * 10 for e in ex)
    assert (
        PathfinderTask(contour_length=9).distractor_paddles,
        PathfinderTask(contour_length=9).n_distractors,
    ) == (3, 6)


def test_example_grid_png(tmp_path):
    path = save_example_grid(tmp_path / "grid.png", n=4, seed=1)
    with Image.open(path) as img:
        assert img.size[0] > 200 and img.size[1] > 100


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"levels": 1}, "levels"),
        ({"continuity": 0.5}, "continuity"),
        ({"margin": 0}, "margin"),
        ({"num_distractors": -1}, "num_distractors"),
        ({"seed_distance": 20.0}, "seed_distance"),
    ],
)
def test_bad_config_raises(overrides, field):
    with pytest.raises(ValueError, match=field):
        get_task("pathfinder", **overrides)
