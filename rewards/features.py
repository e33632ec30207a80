"""Frozen video feature backends behind one interface (the encoder of the mass-conservation reward).

A backend maps a batch of clips to one feature vector per clip: ``embed_torch`` takes (B, T, 3, H, W) float in
[-1, 1] and returns (B, D) float32 (differentiable in the input: the encoders are frozen, not detached);
``embed`` takes a list of (T, H, W, 3) uint8 clips and returns a (B, D) float32 numpy array.

Backends (config names): ``appearance`` (default, no weights), ``vjepa2`` (transformers ``VJEPA2Model``) and
``dinov2`` (transformers ``Dinov2Model``), both loaded with ``from_pretrained`` from a local directory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError, InputError
from rewards.registry import Registry
from rewards.video_io import check_clip, check_video_batch, to_unit

FEATURE_BACKENDS: Registry[FeatureBackend] = Registry("features")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureBackend(ABC):
    """One feature vector per clip from a frozen encoder."""

    @abstractmethod
    def embed_torch(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) float in [-1, 1] -> (B, D) float32."""

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """List of (T, H, W, 3) uint8 clips -> (B, D) float32; clips of equal shape are encoded as one batch."""
        clips = [check_clip(c, name=f"clips[{i}]", min_frames=2) for i, c in enumerate(clips)]
        out: list[np.ndarray | None] = [None] * len(clips)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, clip in enumerate(clips):
            groups.setdefault(clip.shape, []).append(i)
        with torch.no_grad():
            for idx in groups.values():
                batch = torch.cat([to_unit(clips[i]) for i in idx])
                for i, row in zip(idx, self.embed_torch(batch).float().numpy(), strict=True):
                    out[i] = row
        return np.stack(out) if out else np.zeros((0, 0), np.float32)


def make_features(name: str = "appearance", **options: object) -> FeatureBackend:
    """Build the feature backend registered as ``name`` (ConfigError for an unknown name)."""
    return FEATURE_BACKENDS.create(name, key="features", **options)


def _unit_rows(v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rows scaled to unit L2 norm; a (near-)zero row stays (near-)zero instead of blowing up."""
    return v / (v.norm(dim=-1, keepdim=True) + eps)


class AppearanceFeatures(FeatureBackend):
    """Hand-made clip statistics, no weights. What it measures, honestly: three blocks, each scaled to unit norm
    and concatenated (so the cosine of two vectors is the mean of the three block cosines):

    1. colour: a soft (linearly interpolated) histogram of each RGB channel, ``bins`` bins, averaged over
       frames — what colours are in the scene, not where;
    2. motion profile: the mean absolute temporal difference of each frame pair, resampled to ``profile``
       points — how much the picture changes over time (zero for a frozen clip);
    3. foreground-area profile: the soft fraction of pixels that differ from the per-pixel temporal median by
       more than ``threshold`` (in [-1, 1] units), resampled to ``profile`` points — the apparent size of what
       moves over time (constant for a rigid object, zero for a frozen clip).

    Blocks 1 and 3 are computed on frames average-pooled to at most ``POOLED`` x ``POOLED`` pixels (speed).
    It knows nothing about objects, materials or inertia; it is a cheap stand-in for a learned video encoder.
    """

    POOLED = 32

    def __init__(self, bins: int = 8, profile: int = 8, threshold: float = 0.1) -> None:
        if bins < 2 or profile < 2 or threshold <= 0:
            raise ConfigError(f"features (appearance): need bins >= 2, profile >= 2, threshold > 0; got "
                              f"bins={bins}, profile={profile}, threshold={threshold}")
        self.bins, self.profile, self.threshold = int(bins), int(profile), float(threshold)

    def embed_torch(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _, h, w = check_video_batch(x, min_frames=2).shape
        x = x.float()
        change = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(2, 3, 4))  # (B, T-1)
        small = F.adaptive_avg_pool2d(x.flatten(0, 1), (min(h, self.POOLED), min(w, self.POOLED))).unflatten(0, (b, t))
        centres = torch.linspace(-1, 1, self.bins)
        weights = (1 - (small.unsqueeze(-1) - centres).abs() * ((self.bins - 1) / 2)).clamp_min(0)
        colour = weights.mean(dim=(1, 3, 4)).flatten(1)  # (B, 3 * bins)
        deviation = (small - small.median(dim=1, keepdim=True).values).abs().amax(dim=2)  # (B, T, h', w')
        soft = torch.sigmoid((deviation - self.threshold) / (0.2 * self.threshold)) - torch.sigmoid(torch.tensor(-5.0))
        area = soft.clamp_min(0).mean(dim=(2, 3))  # (B, T), exactly 0 where nothing deviates
        blocks = [colour, self._resample(change), self._resample(area)]
        return torch.cat([_unit_rows(b) for b in blocks], dim=1) / len(blocks) ** 0.5

    def _resample(self, series: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, profile) by linear interpolation (so clips of different lengths compare)."""
        return F.interpolate(series.unsqueeze(1), size=self.profile, mode="linear", align_corners=True).squeeze(1)


def _load_pretrained(model_class: type, path: str | None) -> torch.nn.Module:
    """``model_class.from_pretrained(path)``, frozen; InputError naming the path if absent or of another class."""
    if path is None or not Path(path).is_dir():
        raise InputError(f"features: model directory not found: {path!r} (set features.path to a local directory "
                         f"saved with {model_class.__name__}.save_pretrained)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"features: cannot read a model config in {path!r}: {exc}") from exc
    if config.model_type != model_class.config_class.model_type:
        raise InputError(f"features: {path!r} holds a {config.model_type!r} model, expected "
                         f"{model_class.config_class.model_type!r} ({model_class.__name__})")
    model = model_class.from_pretrained(path)
    return model.eval().requires_grad_(False)


def _imagenet(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> resized to size x size, ImageNet-normalised."""
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False) * 0.5 + 0.5
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (frames - mean) / std


class VJEPA2Features(FeatureBackend):
    """Frozen V-JEPA 2 video encoder: frames resized to the config's ``crop_size``, ImageNet-normalised, the clip
    padded (last frame repeated) to a multiple of ``tubelet_size``; feature = mean of the encoder's last hidden
    states over all space-time tokens, (B, hidden_size)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def embed_torch(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _, h, w = check_video_batch(x, min_frames=2).shape
        cfg = self.model.config
        frames = _imagenet(x.flatten(0, 1).float(), cfg.crop_size).unflatten(0, (b, t))
        pad = (-t) % cfg.tubelet_size
        if pad:
            frames = torch.cat([frames, frames[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
        hidden = self.model(pixel_values_videos=frames, skip_predictor=True).last_hidden_state
        return hidden.mean(dim=1).float()


class DINOv2Features(FeatureBackend):
    """Frozen DINOv2 image encoder applied per frame (resized to the config's ``image_size``, ImageNet-normalised);
    feature = [time-mean of the per-frame pooled (CLS) vectors, time-mean of |difference| of consecutive ones],
    (B, 2 * hidden_size): the second half sees how the frames change, which a per-frame encoder alone does not."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def embed_torch(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _, h, w = check_video_batch(x, min_frames=2).shape
        frames = _imagenet(x.flatten(0, 1).float(), self.model.config.image_size)
        cls = self.model(pixel_values=frames).pooler_output.unflatten(0, (b, t))  # (B, T, D)
        return torch.cat([cls.mean(1), (cls[:, 1:] - cls[:, :-1]).abs().mean(1)], dim=1).float()


@FEATURE_BACKENDS.register("appearance")
def _make_appearance(**options: object) -> FeatureBackend:
    return AppearanceFeatures(**options)


@FEATURE_BACKENDS.register("vjepa2")
def _make_vjepa2(path: str | None = None) -> FeatureBackend:
    from transformers import VJEPA2Model

    return VJEPA2Features(_load_pretrained(VJEPA2Model, path))


@FEATURE_BACKENDS.register("dinov2")
def _make_dinov2(path: str | None = None) -> FeatureBackend:
    from transformers import Dinov2Model

    return DINOv2Features(_load_pretrained(Dinov2Model, path))
