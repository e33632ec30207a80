"""Feature backends: tiny random V-JEPA 2 / DINOv2 models saved and loaded back from a path, error messages,
and what the weight-free appearance backend sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError, InputError
from rewards.features import make_features
from rewards.video_io import to_unit

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    from transformers import Dinov2Config, Dinov2Model, VJEPA2Config, VJEPA2Model

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    VJEPA2Model(VJEPA2Config(patch_size=8, crop_size=32, frames_per_clip=4, tubelet_size=2, hidden_size=32,
                             num_attention_heads=2, num_hidden_layers=2, pred_hidden_size=16,
                             pred_num_attention_heads=2, pred_num_hidden_layers=1, num_pooler_layers=1,
                             )).save_pretrained(root / "vjepa2")
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
                             intermediate_size=64)).save_pretrained(root / "dinov2")
    return {"vjepa2": str(root / "vjepa2"), "dinov2": str(root / "dinov2")}


def clips(count: int, frames: int = 5, size: tuple[int, int] = (40, 48)) -> list[np.ndarray]:
    return [np.random.default_rng(i).integers(0, 256, (frames, *size, 3), dtype=np.uint8) for i in range(count)]


@pytest.mark.parametrize(("name", "dim"), [("vjepa2", 32), ("dinov2", 64)])
def test_tiny_models_load_frozen_and_embed_batches(model_dirs, name: str, dim: int) -> None:
    backend = make_features(name, path=model_dirs[name])
    assert not backend.model.training
    assert not any(p.requires_grad for p in backend.model.parameters())
    batch = clips(3)
    feats = backend.embed(batch)
    assert feats.shape == (3, dim) and feats.dtype == np.float32 and np.isfinite(feats).all()
    np.testing.assert_allclose(backend.embed(batch[1:2])[0], feats[1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(feats[0], feats[1])
    x = to_unit(batch[0]).requires_grad_(True)
    backend.embed_torch(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_missing_or_wrong_model_directory_names_the_path(model_dirs, tmp_path) -> None:
    with pytest.raises(InputError, match="not found: .*absent"):
        make_features("vjepa2", path=str(tmp_path / "absent"))
    with pytest.raises(InputError, match="holds a 'dinov2' model, expected 'vjepa2'"):
        make_features("vjepa2", path=model_dirs["dinov2"])
    with pytest.raises(ConfigError, match="unknown features backend"):
        make_features("clip")


def moving_square(frames: int = 8, *, velocity: float = 3.0) -> np.ndarray:
    video = np.full((frames, 32, 48, 3), 120, np.uint8)
    for t in range(frames):
        x = int(4 + velocity * t)
        video[t, 12:18, x : x + 6] = (220, 40, 40)
    return video


def test_appearance_sees_colour_motion_and_foreground() -> None:
    backend = make_features("appearance")
    moving = moving_square()
    frozen = np.repeat(moving[:1], len(moving), axis=0)
    recoloured = moving.copy()
    recoloured[moving[..., 0] == 220] = (40, 40, 220)
    f = backend.embed([moving, moving, frozen, recoloured])
    cos = f @ f[0] / (np.linalg.norm(f, axis=1) * np.linalg.norm(f[0]))
    np.testing.assert_allclose(cos[1], 1.0, atol=1e-6)
    # frozen: motion and foreground blocks are exactly zero, so only the colour block can agree: cos <= 1/sqrt(3)
    assert cos[2] <= 3**-0.5 + 1e-4
    # another colour moving the same way: motion and area blocks (the last 2 * 8 entries) agree, colour differs
    np.testing.assert_allclose(f[3, -16:], f[0, -16:], atol=1e-6)
    assert np.abs(f[3, :-16] - f[0, :-16]).max() > 1e-3


def test_appearance_handles_mixed_shapes_and_rejects_bad_clips() -> None:
    backend = make_features("appearance")
    a, b = moving_square(8), moving_square(6)[:, :, :40]
    mixed = backend.embed([a, b, a])
    np.testing.assert_allclose(mixed[0], backend.embed([a])[0], atol=1e-6)
    np.testing.assert_allclose(mixed[1], backend.embed([b])[0], atol=1e-6)
    with pytest.raises(InputError, match=r"clips\[1\]"):
        backend.embed([a, a.astype(np.float32)])
    with pytest.raises(ConfigError):
        make_features("appearance", bins=1)
