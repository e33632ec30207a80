"""NewtonBench / PISA metrics of a generated clip against the reference clip of the same scene.

Positions are normalised per axis by the frame size (x / W, y / H) and distances divided by sqrt(2), so 1 is the
frame diagonal. Metric names (keys of :func:`evaluate_clip`'s result):

- ``centroid_l2``: mean over frames of the normalised distance between the object centroids.
- ``chamfer``: mean over frames of the symmetric Chamfer distance of the mask point sets (pixel centres),
  0.5 * (mean_a min_b |a - b| + mean_b min_a |a - b|), normalised the same way.
- ``mask_iou``: mean over frames of |A & B| / |A | B| (1 where both masks are empty).
- ``velocity_rmse``, ``acceleration_rmse``: root mean square over frames of the vector error of the centroid's
  first / second differences, px/frame and px/frame^2 (not normalised).
- ``kinematic_residual``: :func:`rewards.newton.kinematic_residual` of the generated clip (not compared).

Masks come from :func:`rewards.segment.segment_object` with ONE background for both clips (same static scene):
the given image, else the per-pixel temporal median of the reference clip (so a frozen generated clip is still
segmented). Reference masks can be given instead (e.g. the renderer's). A frame whose generated mask is empty
while the reference's is not counts as the maximum distance 1 in ``centroid_l2`` and ``chamfer``; frames where
the reference mask is empty, or either centroid track lacks a value, are left out of the other means (NaN if
none remain).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from pipeline.errors import InputError
from rewards.flow import FlowBackend
from rewards.newton import MIN_FRAMES, KinematicConfig, kinematic_residual
from rewards.segment import mask_centroids, segment_object
from rewards.video_io import check_clip

CENTROID_L2 = "centroid_l2"
CHAMFER = "chamfer"
MASK_IOU = "mask_iou"
VELOCITY_RMSE = "velocity_rmse"
ACCELERATION_RMSE = "acceleration_rmse"
KINEMATIC_RESIDUAL = "kinematic_residual"
METRICS = (CENTROID_L2, CHAMFER, MASK_IOU, VELOCITY_RMSE, ACCELERATION_RMSE, KINEMATIC_RESIDUAL)


def _scale(shape: tuple[int, int]) -> np.ndarray:
    """Per-axis factors (x, y) turning px into the normalised units (diagonal = 1)."""
    return 1.0 / (np.array([shape[1], shape[0]], dtype=np.float64) * math.sqrt(2))


def centroid_l2(generated: np.ndarray, reference: np.ndarray, shape: tuple[int, int]) -> float:
    """Mean normalised distance of two centroid tracks (T, 2) px; 1 where only the generated one is NaN."""
    dist = np.linalg.norm((generated - reference) * _scale(shape), axis=1)
    dist = np.where(np.isnan(generated[:, 0]) & ~np.isnan(reference[:, 0]), 1.0, dist)
    return float(np.nanmean(dist)) if np.isfinite(dist).any() else math.nan


def chamfer(generated: np.ndarray, reference: np.ndarray) -> float:
    """Mean over frames of the normalised symmetric Chamfer distance of two mask stacks (T, H, W) bool
    (frames with an empty reference mask skipped; 1 where only the generated mask is empty)."""
    scale = _scale(generated.shape[1:])
    values = []
    for a, b in zip(generated, reference, strict=True):
        if not b.any():
            continue
        if not a.any():
            values.append(1.0)
            continue
        pa, pb = np.argwhere(a)[:, ::-1] * scale, np.argwhere(b)[:, ::-1] * scale
        values.append(0.5 * (cKDTree(pb).query(pa)[0].mean() + cKDTree(pa).query(pb)[0].mean()))
    return float(np.mean(values)) if values else math.nan


def mask_iou(generated: np.ndarray, reference: np.ndarray) -> float:
    """Mean per-frame IoU of two mask stacks (T, H, W) bool; a frame with both masks empty counts 1."""
    inter = (generated & reference).sum(axis=(1, 2))
    union = (generated | reference).sum(axis=(1, 2))
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def difference_rmse(generated: np.ndarray, reference: np.ndarray, order: int) -> float:
    """RMS vector error of the ``order``-th differences of two centroid tracks (T, 2) px (NaN rows skipped)."""
    err = (np.diff(generated, n=order, axis=0) - np.diff(reference, n=order, axis=0)) ** 2
    err = err.sum(axis=1)
    return float(math.sqrt(np.nanmean(err))) if np.isfinite(err).any() else math.nan


def evaluate_clip(generated: np.ndarray, reference: np.ndarray, *, reference_masks: np.ndarray | None = None,
                  background: np.ndarray | None = None, flow: FlowBackend | None = None,
                  kinematic: KinematicConfig | None = None) -> dict[str, float]:
    """All :data:`METRICS` of a generated clip vs its reference, both (T, H, W, 3) uint8 of the same shape, T >= 4.

    ``reference_masks`` (T, H, W) bool: true object masks of the reference (e.g. the renderer's); default:
    segmented like the generated clip. ``background`` (H, W, 3) uint8: the empty scene; default: the per-pixel
    temporal median of ``reference``. ``flow`` / ``kinematic``: backend (default DIS) and settings of the
    kinematic residual.
    """
    check_clip(generated, name="generated", min_frames=MIN_FRAMES)
    check_clip(reference, name="reference", min_frames=MIN_FRAMES)
    if generated.shape != reference.shape:
        raise InputError(f"reference: shape {reference.shape} differs from the generated clip's {generated.shape}")
    if background is None:
        background = np.median(reference, axis=0).astype(np.uint8)
    if reference_masks is None:
        reference_masks = segment_object(reference, background=background)
    elif reference_masks.shape != reference.shape[:3] or reference_masks.dtype != bool:
        raise InputError(f"reference_masks: expected bool {reference.shape[:3]}, got {reference_masks.dtype} "
                         f"{reference_masks.shape}")
    masks = segment_object(generated, background=background)
    gen_c, ref_c = mask_centroids(masks), mask_centroids(reference_masks)
    return {
        CENTROID_L2: centroid_l2(gen_c, ref_c, generated.shape[1:3]),
        CHAMFER: chamfer(masks, reference_masks),
        MASK_IOU: mask_iou(masks, reference_masks),
        VELOCITY_RMSE: difference_rmse(gen_c, ref_c, 1),
        ACCELERATION_RMSE: difference_rmse(gen_c, ref_c, 2),
        KINEMATIC_RESIDUAL: kinematic_residual(generated, flow=flow, config=kinematic or KinematicConfig()),
    }
