"""NewtonBench metrics: perfect scores on identical clips, closed forms on shifted squares, segmentation of a
rendered scene against the renderer's masks, and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.errors import InputError
from rewards.metrics import (
    ACCELERATION_RMSE,
    CENTROID_L2,
    CHAMFER,
    KINEMATIC_RESIDUAL,
    MASK_IOU,
    METRICS,
    VELOCITY_RMSE,
    chamfer,
    evaluate_clip,
)
from rewards.segment import segment_object

SIZE, SIDE, FRAMES = 64, 4, 8


def squares(shift: tuple[int, int] = (0, 0), *, present: bool = True) -> np.ndarray:
    """A 4x4 red square moving 5 px/frame to the right on a flat grey background, offset by ``shift`` (x, y) px."""
    video = np.full((FRAMES, SIZE, SIZE, 3), 128, np.uint8)
    for t in range(FRAMES):
        x, y = 6 + 5 * t + shift[0], 20 + t + shift[1]
        if present:
            video[t, y : y + SIDE, x : x + SIDE] = (230, 30, 30)
    return video


def test_identical_clips_score_perfectly() -> None:
    video = squares()
    result = evaluate_clip(video, video)
    assert set(result) == set(METRICS)
    assert result[MASK_IOU] == 1.0
    assert result[CENTROID_L2] == 0.0 and result[CHAMFER] == 0.0
    assert result[VELOCITY_RMSE] == 0.0 and result[ACCELERATION_RMSE] == 0.0
    assert result[KINEMATIC_RESIDUAL] < 0.02  # constant velocity


# dx < SIDE: IoU (s - d) / (s + d), Chamfer mean(2, 1, 0, 0) px; dx >= SIDE: IoU 0, Chamfer d - (s - 1) / 2 px
@pytest.mark.parametrize(("dx", "iou", "chamfer_px"), [(2, (SIDE - 2) / (SIDE + 2), 0.75), (8, 0.0, 6.5)])
def test_shifted_clip_gives_the_closed_form(dx: int, iou: float, chamfer_px: float) -> None:
    reference = squares()
    background = np.full((SIZE, SIZE, 3), 128, np.uint8)
    result = evaluate_clip(squares((dx, 0)), reference, background=background)
    norm = SIZE * math.sqrt(2)
    assert result[CENTROID_L2] == pytest.approx(dx / norm)
    assert result[MASK_IOU] == pytest.approx(iou)
    assert result[CHAMFER] == pytest.approx(chamfer_px / norm)
    assert result[VELOCITY_RMSE] == pytest.approx(0.0, abs=1e-12)
    assert result[ACCELERATION_RMSE] == pytest.approx(0.0, abs=1e-12)


def test_chamfer_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 16, 20)) < 0.05, rng.random((2, 16, 20)) < 0.05
    pa, pb = [np.argwhere(m)[:, ::-1] / (np.array([20, 16]) * math.sqrt(2)) for m in (a[0], b[0])]
    d = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
    expected0 = 0.5 * (d.min(1).mean() + d.min(0).mean())
    pa, pb = [np.argwhere(m)[:, ::-1] / (np.array([20, 16]) * math.sqrt(2)) for m in (a[1], b[1])]
    d = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
    expected = 0.5 * (expected0 + 0.5 * (d.min(1).mean() + d.min(0).mean()))
    assert chamfer(a, b) == pytest.approx(expected)


def test_missing_object_scores_the_maximum_distance() -> None:
    result = evaluate_clip(squares(present=False), squares())
    assert result[MASK_IOU] == 0.0 and result[CENTROID_L2] == 1.0 and result[CHAMFER] == 1.0
    assert math.isnan(result[VELOCITY_RMSE])


def test_segmentation_of_a_rendered_scene_matches_the_renderer() -> None:
    from envs.newton import render_clip, sample_spec

    clip = render_clip(sample_spec("test", np.random.default_rng(2), primitive="horizontal_throw"), seed=5)
    masks = segment_object(clip.video)
    iou = (masks & clip.masks).sum(axis=(1, 2)) / (masks | clip.masks).sum(axis=(1, 2))
    assert np.median(iou) > 0.8
    result = evaluate_clip(clip.video, clip.video, reference_masks=clip.masks)
    assert result[MASK_IOU] > 0.8 and result[CENTROID_L2] < 0.01


def test_bad_inputs_raise_input_error() -> None:
    video = squares()
    with pytest.raises(InputError, match="shape"):
        evaluate_clip(video, video[:, :32])
    with pytest.raises(InputError, match="reference_masks"):
        evaluate_clip(video, video, reference_masks=np.zeros((FRAMES, SIZE, SIZE), np.uint8))
    with pytest.raises(InputError, match="at least 4 frames"):
        evaluate_clip(video[:3], video[:3])
