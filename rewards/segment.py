"""Object masks of a generated clip with a static camera, without a segmentation network.

Method: background = per-pixel temporal median of the clip (or a given image, e.g. a clean first context frame);
difference = per-pixel maximum over RGB of |frame - background| (0..255); threshold = Otsu's threshold of all the
clip's differences, but at least ``min_difference`` levels (so a clip with nothing moving yields empty masks);
mask = the largest 8-connected component above the threshold in each frame.
Limitation: where the object stays at one place for more than half the clip, the median background contains it and
the mask misses that part.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.errors import InputError
from rewards.video_io import check_clip


def segment_object(video: np.ndarray, *, background: np.ndarray | None = None,
                   min_difference: int = 12) -> np.ndarray:
    """Masks (T, H, W) bool of the single moving object in ``video`` (T, H, W, 3) uint8.

    ``background``: (H, W, 3) uint8 image of the empty scene; default the per-pixel temporal median.
    """
    check_clip(video, min_frames=1)
    if background is None:
        background = np.median(video, axis=0)
    elif background.shape != video.shape[1:]:
        raise InputError(f"background: expected shape {video.shape[1:]}, got {background.shape}")
    diff = np.abs(video.astype(np.int16) - background.astype(np.int16)).max(axis=-1).astype(np.uint8)
    otsu, _ = cv2.threshold(diff.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    above = diff > max(otsu, min_difference)
    return np.stack([_largest_component(frame) for frame in above])


def _largest_component(binary: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a (H, W) bool image (all False if there is none)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(binary)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def mask_centroids(masks: np.ndarray) -> np.ndarray:
    """(T, H, W) bool -> (T, 2) float (x, y) px centroids; NaN for empty masks."""
    ys, xs = np.mgrid[0 : masks.shape[1], 0 : masks.shape[2]]
    area = masks.sum(axis=(1, 2)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([(masks * xs).sum(axis=(1, 2)) / area, (masks * ys).sum(axis=(1, 2)) / area], axis=1)
