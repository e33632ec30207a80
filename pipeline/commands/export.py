"""Export a run's newest checkpoint: safetensors (+ JSON description), a diffusers folder, or a peft LoRA folder.

Control runs (``checkpoints/control``): ``--format safetensors`` writes ``policy.safetensors`` (value weights w and,
for linear systems, the gain K of u = -Kx) and ``system.json`` (system name, parameters, dimensions, the resolved
control config). Video runs (``checkpoints/video``) hold the policy network's ``model`` state dict and its
``model_spec`` (:func:`model_spec`, or :func:`video_model_spec` for a :class:`rollouts.models.VideoPolicy` net, whose
diffusers model sits under a wrapper): ``diffusers`` writes a ``save_pretrained`` folder (LoRA adapters merged),
``lora`` the adapter folder (peft's ``save_pretrained``, or diffusers' ``save_lora_adapter`` for adapters added with
``add_adapter``), ``safetensors`` the raw state dict plus ``model_spec.json``. The wrapper's settings (frames,
context frames, sample space) go to ``newtonrl_video.json`` beside the model.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from pipeline.checkpoint import Checkpoint, list_checkpoints, load_checkpoint
from pipeline.errors import ConfigError, InputError

log = logging.getLogger(__name__)

FORMATS = ("safetensors", "diffusers", "lora")
#: packages whose model classes a checkpoint's model_spec may name (nothing else is imported)
MODEL_PACKAGES = ("diffusers", "rollouts", "pipeline")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (runs/<name>-<time>)")
    parser.add_argument("--format", choices=FORMATS, default="safetensors", help="what to write")
    parser.add_argument("--track", choices=["control", "video"], help="which track's checkpoint (default: the one "
                        "the run has)")
    parser.add_argument("--out", help="output folder (default: RUN_DIR/export/<track>-<format>)")


def main(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    track = args.track or next((t for t in ("video", "control") if list_checkpoints(run / "checkpoints" / t)), None)
    if track is None or not list_checkpoints(run / "checkpoints" / track):
        raise InputError(f"{run}: no checkpoint to export (expected {run}/checkpoints/<control|video>/step-*)")
    if track == "control" and args.format != "safetensors":
        raise ConfigError(f"--format {args.format}: control runs export as safetensors (value/policy weights)")
    ckpt = load_checkpoint(run / "checkpoints" / track)
    out = Path(args.out or run / "export" / f"{track}-{args.format}")
    out.mkdir(parents=True, exist_ok=True)
    if track == "control":
        export_control(ckpt, run, out)
    else:
        export_model(ckpt, args.format, out)
    print(f"exported {track} step {ckpt.step} ({args.format}) to {out}")
    return 0


def export_control(ckpt: Checkpoint, run: Path, out: Path) -> None:
    """``policy.safetensors`` (w, and K for linear systems) + ``system.json`` (the system description)."""
    from envs.control import make_system

    config = yaml.safe_load((run / "config.yaml").read_text())
    control = config["control"]
    system = make_system(control["system"]["name"], control["system"].get("params", {}))
    weights = np.asarray(ckpt.state["weights"], dtype=np.float64)
    tensors = {"value_weights": torch.from_numpy(weights)}
    if hasattr(system, "gain_from_weights"):
        tensors["policy_gain"] = torch.from_numpy(np.asarray(system.gain_from_weights(weights), dtype=np.float64))
    description = {
        "system": control["system"]["name"], "params": control["system"].get("params", {}),
        "state_dim": system.state_dim, "input_dim": system.input_dim, "num_features": system.num_features,
        "Q": np.asarray(system.Q).tolist(), "R": np.asarray(system.R).tolist(),
        "value": "V(x) = value_weights . phi(x)", "policy": "u(x) = -1/2 R^-1 g(x)' dphi(x)' value_weights"
        + (" = -policy_gain x" if "policy_gain" in tensors else ""),
        "iteration": ckpt.state["iteration"], "converged": ckpt.state["converged"], "control_config": control,
    }
    save_file(tensors, str(out / "policy.safetensors"), metadata={"system": json.dumps(description)})
    (out / "system.json").write_text(json.dumps(description, indent=2))


def model_spec(model: nn.Module) -> dict[str, Any]:
    """How to rebuild ``model`` from config: its class and config; with LoRA adapters also their config and
    ``adapter``: 'peft' (a peft ``PeftModel``) or 'diffusers' (adapters added by diffusers' ``add_adapter``).

    Store it in the checkpoint state (``model_spec``) next to ``model`` (the state dict) so runs can be exported.
    """
    spec: dict[str, Any] = {}
    if getattr(model, "peft_config", None):
        lora = model.peft_config["default"].to_dict()
        lora = {k: sorted(v) if isinstance(v, set) else v for k, v in lora.items()}
        spec["lora"] = {k: v for k, v in lora.items() if _jsonable(v)}
        spec["adapter"] = "peft" if hasattr(model, "get_base_model") else "diffusers"
        model = model.get_base_model() if spec["adapter"] == "peft" else model
    cls = type(model)
    spec.update({"class": f"{cls.__module__}:{cls.__qualname__}", "config": {k: v for k, v in dict(model.config).items()
                                                                              if _jsonable(v)}})
    return spec


def video_model_spec(policy: Any) -> dict[str, Any]:
    """:func:`model_spec` of the diffusers model inside a :class:`rollouts.models.VideoPolicy`'s net, plus the
    state-dict ``prefix`` of that model in the net and the policy's settings (``video``: parametrisation, sample
    space, and the tiny model's frame layout) for ``newtonrl_video.json``."""
    from dataclasses import asdict, is_dataclass

    from rollouts.models import inner_model

    name, inner = inner_model(policy.net)
    video = {"parametrisation": policy.parametrisation, "residual": policy.residual,
             "predicts_sample": policy.predicts_sample, "time_scale": policy.time_scale,
             "kind": policy.meta.get("kind")}
    config = policy.meta.get("config")
    if is_dataclass(config):
        video["config"] = asdict(config)
    return {**model_spec(inner), "prefix": f"{name}." if name else "", "video": video}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Instantiate the (random-init) model that :func:`model_spec` describes, with its LoRA adapters if any."""
    module_name, _, name = spec["class"].partition(":")
    if module_name.split(".")[0] not in MODEL_PACKAGES:
        raise InputError(f"model_spec class {spec['class']!r} is outside {MODEL_PACKAGES}; refusing to import it")
    cls = getattr(importlib.import_module(module_name), name)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items() if not k.startswith("_")}
    model = cls.from_config(config)
    if "lora" in spec:
        from peft import LoraConfig, get_peft_model

        fields = set(LoraConfig.__dataclass_fields__)
        lora = LoraConfig(**{k: v for k, v in spec["lora"].items() if k in fields})
        if spec.get("adapter") == "diffusers":
            model.add_adapter(lora)
        else:
            model = get_peft_model(model, lora)
    return model


def export_model(ckpt: Checkpoint, fmt: str, out: Path) -> None:
    """Write a video checkpoint's policy network as ``fmt`` (diffusers / lora / safetensors)."""
    state = ckpt.state
    if "model" not in state or "model_spec" not in state:
        raise InputError(f"checkpoint {ckpt.path} has no model / model_spec; save it with "
                         "training_state(model=net, model_spec=model_spec(net), ...)")
    spec = state["model_spec"]
    prefix = spec.get("prefix", "")
    weights = {k.removeprefix(prefix): v.contiguous() for k, v in state["model"].items() if k.startswith(prefix)}
    if "video" in spec:
        (out / "newtonrl_video.json").write_text(json.dumps(spec["video"], indent=2))
    if fmt == "safetensors":
        save_file(weights, str(out / "model.safetensors"))
        (out / "model_spec.json").write_text(json.dumps(spec, indent=2))
        return
    if fmt == "lora" and "lora" not in spec:
        raise ConfigError("--format lora: this run's policy has no LoRA adapters; use diffusers or safetensors")
    model = build_model(spec)
    model.load_state_dict(weights)
    diffusers_adapter = spec.get("adapter") == "diffusers"
    if fmt == "lora":
        (model.save_lora_adapter if diffusers_adapter else model.save_pretrained)(str(out))
        return
    if "lora" in spec and diffusers_adapter:
        model.fuse_lora()
        model.unload_lora()
    elif "lora" in spec:
        model = model.merge_and_unload()
    model.save_pretrained(str(out))
