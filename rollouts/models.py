"""Video denoisers behind one interface: the tiny embedded default and diffusers transformers from a local path.

A :class:`VideoPolicy` maps a noisy clip of future frames ``x`` (B, T, C, H, W), the noise level (B,) and the
:class:`Conditions` (context frames + primitive label [+ text embeddings]) to the model output (velocity for
flow matching, epsilon for DDIM models). ``policy(x, level, cond)`` uses the trainable weights,
``policy.reference(x, level, cond)`` the frozen reference (adapters disabled for LoRA, a frozen copy of the
initial weights otherwise).

Sample space. The tiny default works on the *residual to the last context frame*: ``x0 = frames - last_context``
(static camera: the background cancels, only the moving object is left to model); ``to_video`` undoes it. The
transformer policies work directly on pixels in [-1, 1] (no VAE) and see the context frames as clean frames
prepended on the time axis.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from pipeline.errors import ConfigError, InputError

log = logging.getLogger(__name__)

Parametrisation = Literal["flow", "epsilon"]
#: Noise level -> model timestep: flow models see 1000 * sigma (diffusers' FlowMatch convention).
FLOW_TIME_SCALE = 1000.0


@dataclass
class Conditions:
    """What a clip is conditioned on. ``context``: (B, Tc, 3, H, W) float in [-1, 1]; ``labels``: (B,) int64
    primitive index; ``text``: optional (B, L, D) float text embeddings (transformers only)."""

    context: Tensor
    labels: Tensor
    text: Tensor | None = None

    def repeat(self, k: int) -> Conditions:
        """Each condition repeated k times consecutively (GRPO groups): B -> B * k."""
        text = None if self.text is None else self.text.repeat_interleave(k, 0)
        return Conditions(self.context.repeat_interleave(k, 0), self.labels.repeat_interleave(k, 0), text)

    def index(self, idx: Tensor | slice) -> Conditions:
        text = None if self.text is None else self.text[idx]
        return Conditions(self.context[idx], self.labels[idx], text)


@dataclass(frozen=True)
class TinyVideoConfig:
    """The embedded default (measured on 2 cores: ~0.3 s per training step at batch 16 on one thread).

    frames: generated frames T; context_frames: Tc conditioning frames; height/width: px;
    blocks: UNet2D channel widths per resolution level; num_classes: primitive labels (class embedding).
    """

    frames: int = 12
    context_frames: int = 4
    height: int = 32
    width: int = 32
    blocks: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    num_classes: int = 5
    norm_groups: int = 16

    def validate(self) -> None:
        if self.height % 2 ** (len(self.blocks) - 1) or self.width % 2 ** (len(self.blocks) - 1):
            raise ConfigError(f"model.height/width = {self.height}x{self.width}: expected multiples of "
                              f"{2 ** (len(self.blocks) - 1)} for {len(self.blocks)} UNet levels")
        if any(b % self.norm_groups for b in self.blocks):
            raise ConfigError(f"model.blocks = {list(self.blocks)}: expected multiples of norm_groups = "
                              f"{self.norm_groups}")


class TinyVideoUNet(nn.Module):
    """UNet2DModel with frames stacked as channels: input = noisy future frames ++ context frames."""

    def __init__(self, config: TinyVideoConfig) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        config.validate()
        self.config = config
        levels = len(config.blocks)
        self.unet = UNet2DModel(
            sample_size=(config.height, config.width),
            in_channels=3 * (config.frames + config.context_frames),
            out_channels=3 * config.frames,
            block_out_channels=config.blocks,
            layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            num_class_embeds=config.num_classes,
            norm_num_groups=config.norm_groups,
        )

    def forward(self, x: Tensor, timestep: Tensor, cond: Conditions) -> Tensor:
        """x: (B, T, 3, H, W); timestep: (B,) in [0, 1000]; returns (B, T, 3, H, W)."""
        inp = torch.cat([x.flatten(1, 2), cond.context.to(x.dtype).flatten(1, 2)], dim=1)
        out = self.unet(inp, timestep, class_labels=cond.labels).sample
        return out.reshape(x.shape)


@dataclass
class VideoPolicy:
    """A denoiser plus its reference. ``parametrisation``: what the sampler gets, 'flow' (velocity) or
    'epsilon'; ``predicts_sample``: the net predicts the clean sample x0 and the policy converts it to a velocity
    (the tiny default: a conv net with GroupNorm learns x0 ~ 0 + object far faster than the velocity, which needs
    an identity map of its noisy input); ``residual``: sample space is frames minus the last context frame."""

    net: nn.Module
    parametrisation: Parametrisation = "flow"
    residual: bool = True
    frozen_reference: nn.Module | None = None
    lora: bool = False
    predicts_sample: bool = False
    time_scale: float = FLOW_TIME_SCALE
    meta: dict = field(default_factory=dict)

    def __call__(self, x: Tensor, level: Tensor, cond: Conditions) -> Tensor:
        return self._output(self.net, x, level, cond)

    def _output(self, net: nn.Module, x: Tensor, level: Tensor, cond: Conditions) -> Tensor:
        """Sampler-facing output (velocity or epsilon); ``predicts_sample`` nets give x0, converted to
        ``v = (x - x0) / sigma``."""
        out = net(x, self.timestep(level), cond)
        if self.predicts_sample:
            sigma = level.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype).clamp(min=1e-3)
            return (x - out) / sigma
        return out

    def timestep(self, level: Tensor) -> Tensor:
        """Noise level (B,) -> model timestep (B,): ``time_scale * sigma`` for flow models, the index of the
        nearest ``alpha_bar`` in ``meta['alphas_cumprod']`` for epsilon models."""
        if self.parametrisation == "flow":
            return level * self.time_scale
        alphas = self.meta["alphas_cumprod"].to(level.dtype)
        return (alphas[None, :] - level[:, None]).abs().argmin(dim=1)

    def reference(self, x: Tensor, level: Tensor, cond: Conditions) -> Tensor:
        """Output of the reference model (no grad): LoRA adapters disabled, or the frozen initial copy."""
        with torch.no_grad():
            if self.lora:
                _, inner = inner_model(self.net)
                inner.disable_adapters()
                try:
                    return self._output(self.net, x, level, cond)
                finally:
                    inner.enable_adapters()
            if self.frozen_reference is None:
                self.frozen_reference = copy.deepcopy(self.net).requires_grad_(False).eval()
            return self._output(self.frozen_reference, x, level, cond)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def get_weights(self) -> dict[str, Tensor]:
        """Trainable tensors only (LoRA: the adapters), detached CPU copies."""
        names = {id(p) for p in self.trainable_parameters()}
        return {k: v.detach().cpu().clone() for k, v in self.net.named_parameters() if id(v) in names}

    def set_weights(self, weights: dict[str, Tensor]) -> None:
        params = dict(self.net.named_parameters())
        missing = sorted(set(weights) - set(params))
        if missing:
            raise ConfigError(f"weights: unknown parameter names {missing[:3]}... for this model")
        with torch.no_grad():
            for k, v in weights.items():
                params[k].copy_(v)

    def to_sample(self, frames: Tensor, cond: Conditions) -> Tensor:
        """Video frames (B, T, 3, H, W) in [-1, 1] -> the model's sample space."""
        return frames - cond.context[:, -1:].to(frames.dtype) if self.residual else frames

    def to_video(self, sample: Tensor, cond: Conditions) -> Tensor:
        """Inverse of :meth:`to_sample`, clamped to [-1, 1]."""
        frames = sample + cond.context[:, -1:].to(sample.dtype) if self.residual else sample
        return frames.clamp(-1, 1)


def inner_model(net: nn.Module) -> tuple[str, nn.Module]:
    """(attribute name, module) of the diffusers model inside a policy net (``''``, net if it is one itself)."""
    for name in ("model", "unet"):
        if isinstance(getattr(net, name, None), nn.Module):
            return name, getattr(net, name)
    return "", net


def build_tiny_policy(config: TinyVideoConfig | None = None, *, seed: int = 0) -> VideoPolicy:
    """The embedded default policy, random init (load SFT weights with :func:`load_tiny_policy`)."""
    config = config or TinyVideoConfig()
    torch.manual_seed(seed)
    return VideoPolicy(net=TinyVideoUNet(config), predicts_sample=True, meta={"kind": "tiny", "config": config})


def save_tiny_policy(policy: VideoPolicy, directory: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` (fp32 tensors of the UNet) and ``config.json`` (TinyVideoConfig + extra)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: TinyVideoConfig = policy.meta["config"]
    state = {k: v.detach().contiguous() for k, v in policy.net.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    payload = {"kind": "tiny", "config": asdict(config), **(extra or {})}
    (directory / "config.json").write_text(json.dumps(payload, indent=2))
    return directory


def load_tiny_policy(directory: str | Path) -> VideoPolicy:
    """Inverse of :func:`save_tiny_policy`; InputError if the files are missing or do not fit the config."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights_path = directory / "config.json", directory / "model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise InputError(f"model path {directory}: expected config.json and model.safetensors there")
    payload = json.loads(cfg_path.read_text())
    if payload.get("kind") != "tiny":
        raise InputError(f"{cfg_path}: kind = {payload.get('kind')!r}, expected 'tiny'")
    raw = payload["config"]
    config = TinyVideoConfig(**{**raw, "blocks": tuple(raw["blocks"])})
    policy = build_tiny_policy(config)
    try:
        policy.net.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as exc:
        raise InputError(f"{weights_path}: weights do not fit {config}: {exc}") from exc
    policy.meta["source"] = str(directory)
    return policy


#: diffusers class name -> family tag used by :class:`TransformerVideoNet`.
TRANSFORMER_CLASSES = {"WanTransformer3DModel": "wan", "CogVideoXTransformer3DModel": "cogvideox",
                       "LTXVideoTransformer3DModel": "ltx"}
#: Attention projections that receive LoRA adapters (same names in all three classes).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class TransformerVideoNet(nn.Module):
    """A diffusers video transformer in pixel space: context frames are prepended (clean) on the time axis, text
    embeddings default to zeros; the output keeps only the generated frames."""

    def __init__(self, model: nn.Module, family: str) -> None:
        super().__init__()
        self.model, self.family = model, family
        cfg = model.config
        self.text_dim = {"wan": "text_dim", "cogvideox": "text_embed_dim", "ltx": "caption_channels"}[family]
        self.text_dim = int(cfg[self.text_dim])
        self.text_len = int(cfg.get("max_text_seq_length", 4)) if family == "cogvideox" else 4

    def forward(self, x: Tensor, timestep: Tensor, cond: Conditions) -> Tensor:
        """x: (B, T, 3, H, W); timestep: (B,); returns (B, T, 3, H, W)."""
        b, t, c, h, w = x.shape
        full = torch.cat([cond.context.to(x.dtype), x], dim=1)
        frames = full.shape[1]
        text = cond.text if cond.text is not None else x.new_zeros(b, self.text_len, self.text_dim)
        if self.family == "wan":
            out = self.model(full.transpose(1, 2), timestep, text).sample.transpose(1, 2)
        elif self.family == "cogvideox":
            out = self.model(full, text, timestep).sample
        else:
            tokens = full.permute(0, 1, 3, 4, 2).reshape(b, frames * h * w, c)
            mask = torch.ones(b, text.shape[1], dtype=x.dtype)
            out = self.model(tokens, text, timestep, mask, num_frames=frames, height=h, width=w).sample
            out = out.reshape(b, frames, h, w, c).permute(0, 1, 4, 2, 3)
        return out[:, -t:]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read JSON ({exc})") from exc


def _scheduler_parametrisation(root: Path) -> tuple[Parametrisation, Tensor | None]:
    """Parametrisation implied by ``root/scheduler/scheduler_config.json`` (flow if there is none)."""
    path = root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return "flow", None
    cfg = _read_json(path)
    name, prediction = cfg.get("_class_name", "?"), cfg.get("prediction_type", "epsilon")
    if name.startswith("FlowMatch") or prediction == "flow_prediction" or cfg.get("use_flow_sigmas"):
        return "flow", None
    if prediction == "epsilon" and name in ("DDIMScheduler", "DDPMScheduler"):
        from diffusers import DDIMScheduler

        return "epsilon", DDIMScheduler.from_config(cfg).alphas_cumprod.float()
    raise InputError(f"{path}: scheduler {name} with prediction_type={prediction!r} does not fit the samplers "
                     "here (flow matching -> sde/cps, epsilon DDIM/DDPM -> ddim); convert the model or its scheduler")


def load_transformer_policy(path: str | Path, *, lora_rank: int = 8, lora_alpha: float | None = None,
                            expected_class: str | None = None) -> VideoPolicy:
    """Load a diffusers video transformer (a model folder, or a pipeline folder with ``transformer/``) from a
    local path and add LoRA adapters (peft) on the attention projections; the reference = adapters disabled.

    Raises InputError before any work for a missing path, an unsupported/unexpected class, a model that is not
    in pixel space (in_channels != 3), or a scheduler that fits no sampler.
    """
    from peft import LoraConfig

    root = Path(path)
    model_dir = root / "transformer" if (root / "transformer" / "config.json").is_file() else root
    if not (model_dir / "config.json").is_file():
        raise InputError(f"model path {root}: no config.json there or in {root / 'transformer'}")
    cls_name = _read_json(model_dir / "config.json").get("_class_name")
    if cls_name not in TRANSFORMER_CLASSES or (expected_class and cls_name != expected_class):
        wanted = expected_class or sorted(TRANSFORMER_CLASSES)
        raise InputError(f"model path {model_dir}: class {cls_name!r}, expected {wanted!r}")
    if lora_rank < 1:
        raise ConfigError(f"model.lora_rank = {lora_rank}: expected an integer >= 1")
    parametrisation, alphas = _scheduler_parametrisation(root)
    import diffusers

    model = getattr(diffusers, cls_name).from_pretrained(str(model_dir))
    if model.config.in_channels != 3:
        raise InputError(f"{model_dir}: in_channels = {model.config.in_channels}; this loader works in pixel "
                         "space (3 channels, no VAE)")
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_alpha or lora_rank, target_modules=list(LORA_TARGETS),
                                 init_lora_weights=True))
    meta = {"kind": "transformer", "class": cls_name, "source": str(root)}
    if alphas is not None:
        meta["alphas_cumprod"] = alphas
    return VideoPolicy(net=TransformerVideoNet(model, TRANSFORMER_CLASSES[cls_name]),
                       parametrisation=parametrisation, residual=False, lora=True, meta=meta)
