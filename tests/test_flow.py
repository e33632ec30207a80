"""Flow backends: known translations of a textured image, registry rules, RAFT's optional dependency, and the
differentiable Lucas–Kanade backend against DIS on a rendered scene."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError, InputError
from rewards.flow import FLOW_BACKENDS, make_flow
from rewards.video_io import to_unit

torch.set_num_threads(1)


def translating_clip(velocity: tuple[float, float], frames: int = 5, size: int = 64) -> np.ndarray:
    """A smooth random texture whose content moves by ``velocity`` (x, y) px per frame (sub-pixel, bilinear)."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (160, 160, 3)).astype(np.uint8), (0, 0), 1.5)
    out = []
    for t in range(frames):
        shift = np.float32([[1, 0, -40 + velocity[0] * t], [0, 1, -40 + velocity[1] * t]])
        out.append(cv2.warpAffine(texture, shift, (size, size), flags=cv2.INTER_LINEAR))
    return np.stack(out)


@pytest.mark.parametrize("name", ["dis", "farneback", "lk"])
@pytest.mark.parametrize("velocity", [(1.0, 0.0), (2.5, -1.5), (0.3, 0.7)])
def test_backends_recover_a_known_translation(name: str, velocity: tuple[float, float]) -> None:
    flow = make_flow(name).flow(translating_clip(velocity))
    assert flow.shape == (4, 64, 64, 2) and flow.dtype == np.float32
    inner = flow[:, 10:-10, 10:-10].reshape(-1, 2)
    np.testing.assert_allclose(np.median(inner, axis=0), velocity, atol=0.05)
    assert np.abs(inner - np.array(velocity)).mean() < 0.15


def test_lk_batch_form_is_differentiable_and_matches_numpy_form() -> None:
    lk = make_flow("lk")
    video = translating_clip((1.5, 0.5), frames=4, size=32)
    x = torch.cat([to_unit(video), to_unit(video[::-1].copy())]).requires_grad_(True)
    out = lk.flow_torch(x)
    assert out.shape == (2, 3, 2, 32, 32)
    np.testing.assert_allclose(out[0].detach().permute(0, 2, 3, 1).numpy(), lk.flow(video), atol=1e-5)
    out[:, :, 0, 8:-8, 8:-8].mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_lk_agrees_with_dis_on_a_rendered_scene() -> None:
    from envs.newton import render_clip, sample_spec

    clip = render_clip(sample_spec("train", np.random.default_rng(4), primitive="parabolic_throw",
                                   resolution=(64, 64), num_frames=16), seed=1)
    in_mask = [np.stack([f[m].mean(0) for f, m in zip(flow, clip.masks[:-1], strict=True)])
               for flow in (make_flow("dis").flow(clip.video), make_flow("lk").flow(clip.video))]
    true = np.diff(clip.centroids, axis=0)
    speed = np.linalg.norm(true, axis=1)
    assert np.median(np.linalg.norm(in_mask[0] - in_mask[1], axis=1) / speed) < 0.12
    assert np.median(np.linalg.norm(in_mask[1] - true, axis=1) / speed) < 0.12


def test_registry_rejects_duplicates_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        FLOW_BACKENDS.register("dis")(lambda: None)
    with pytest.raises(ConfigError, match="unknown flow backend 'nope'"):
        make_flow("nope")
    with pytest.raises(ConfigError, match="preset"):
        make_flow("dis", preset="slow")


@pytest.mark.parametrize("bad", [np.zeros((4, 32, 32, 2), np.uint8), np.zeros((4, 32, 32, 3), np.float32),
                                 np.zeros((1, 32, 32, 3), np.uint8), np.zeros((4, 8, 8, 3), np.uint8), "video"])
def test_bad_clips_raise_input_error(bad: object) -> None:
    with pytest.raises(InputError):
        make_flow("dis").flow(bad)


def _torchvision_works() -> bool:
    try:
        import torchvision.models.optical_flow  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken build raises RuntimeError
        return False
    return True


@pytest.mark.skipif(_torchvision_works(), reason="torchvision is installed here")
def test_raft_without_torchvision_names_the_package() -> None:
    with pytest.raises(InputError, match="torchvision"):
        make_flow("raft", weights="/nonexistent/raft.pth")


@pytest.mark.skipif(not _torchvision_works(), reason="needs a working torchvision (optional extra 'raft')")
def test_raft_names_a_missing_weights_path(tmp_path) -> None:
    with pytest.raises(InputError, match="raft.pth"):
        make_flow("raft", weights=str(tmp_path / "raft.pth"))


class _ConstantFlowNet(torch.nn.Module):
    """Stands in for RAFT: returns a constant flow (x, y) in the pixels of the frames it is given."""

    def __init__(self, per_frame: tuple[float, float]) -> None:
        super().__init__()
        self.per_frame = per_frame
        self.seen: tuple[int, ...] = ()

    def forward(self, first: torch.Tensor, second: torch.Tensor, num_flow_updates: int) -> list[torch.Tensor]:
        self.seen = tuple(first.shape)
        flow = torch.tensor(self.per_frame, dtype=first.dtype).view(1, 2, 1, 1)
        return [flow.expand(first.shape[0], 2, *first.shape[-2:])]


def test_raft_wrapper_resizes_to_raft_sizes_and_rescales_the_flow() -> None:
    from rewards.flow import RAFTFlow

    net = _ConstantFlowNet((4.0, -3.0))
    out = RAFTFlow(net, iterations=3).flow_torch(torch.zeros(2, 3, 3, 60, 32))
    assert net.seen == (4, 3, 128, 128)  # 2 clips x 2 pairs, both sides raised to RAFT's minimum 128
    assert out.shape == (2, 2, 2, 60, 32)
    np.testing.assert_allclose(out[:, :, 0].numpy(), 4.0 * 32 / 128)
    np.testing.assert_allclose(out[:, :, 1].numpy(), -3.0 * 60 / 128)
