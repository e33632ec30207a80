"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically, the last k kept.

A checkpoint is a folder ``<run>/checkpoints/step-<8 digits>/`` holding ``tensors.safetensors`` and ``state.json``.
It is written under a temporary name and renamed into place (``os.replace``), so a crash during a save leaves the
previous checkpoints untouched and never a half-written one under a ``step-*`` name. Nothing is unpickled on load.

Nested training state (a model / optimizer / scheduler ``state_dict``, RNG states, numpy arrays) is split by
:func:`flatten` into a JSON tree and a flat ``{key: tensor}`` dict, and rebuilt exactly by :func:`unflatten`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import InputError

log = logging.getLogger(__name__)

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``step``, the JSON ``state`` tree (tensors already put back) and its folder."""

    step: int
    state: dict[str, Any]
    path: Path


def flatten(obj: Any, tensors: dict[str, torch.Tensor], key: str = "t") -> Any:
    """JSON-able copy of ``obj``; tensors / arrays go to ``tensors`` under a path-like key, marked in the tree.

    Handles dicts (any hashable JSON-scalar keys), lists, tuples, tensors, numpy arrays and scalars.
    """
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().clone().contiguous()  # own storage: safetensors rejects shared ones
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = [[k, flatten(v, tensors, f"{key}.{k}")] for k, v in obj.items()]
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return dict(items)
        return {"__items__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {key})")


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__ndarray__" in tree:
        return tensors[tree["__ndarray__"]].numpy()
    if "__tuple__" in tree:
        return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
    if "__items__" in tree:
        return {k: unflatten(v, tensors) for k, v in tree["__items__"]}
    return {k: unflatten(v, tensors) for k, v in tree.items()}


def rng_state() -> dict[str, Any]:
    """Global RNG states of python, numpy (legacy) and torch (CPU and, when present, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(*, model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                   scheduler: Any = None, rng: bool = True, **extra: Any) -> dict[str, Any]:
    """The state to checkpoint: ``state_dict`` of model / optimizer / scheduler, RNG states, plus ``extra``."""
    state: dict[str, Any] = dict(extra)
    for name, part in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler)):
        if part is not None:
            state[name] = part.state_dict()
    if rng:
        state["rng"] = rng_state()
    return state


def restore_training_state(state: dict[str, Any], *, model: torch.nn.Module | None = None,
                           optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> None:
    """Load what :func:`training_state` captured into the given objects (and the global RNGs)."""
    if model is not None:
        model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if "rng" in state:
        set_rng_state(state["rng"])


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory`` as ``(step, path)``, oldest first (temp folders are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], *, keep_last: int = 2) -> Path:
    """Write ``state`` as checkpoint ``step`` atomically, then delete all but the newest ``keep_last``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    tmp = directory / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors: dict[str, torch.Tensor] = {}
        tree = flatten(state, tensors)
        save_file(tensors, str(tmp / TENSORS_FILE))
        with open(tmp / STATE_FILE, "w") as fh:
            json.dump({"step": step, "state": tree}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():  # re-saving a step (after a resume): move the old one aside first
            old = directory / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, path in list_checkpoints(directory)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    log.debug("checkpoint %s written", final)
    return final


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load one checkpoint folder (or the newest one inside a ``checkpoints`` folder); safetensors + JSON only."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        found = list_checkpoints(path)
        if not found:
            raise InputError(f"no checkpoint in {path} (expected step-XXXXXXXX folders with {STATE_FILE})")
        path = found[-1][1]
    try:
        tensors = load_file(str(path / TENSORS_FILE))
        meta = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"checkpoint {path} cannot be read: {exc}") from None
    return Checkpoint(step=int(meta["step"]), state=unflatten(meta["state"], tensors), path=path)


def truncate_metrics(run_path: str | Path, *, prefix: str, step: int) -> int:
    """Drop ``prefix`` records after ``step`` from ``<run>/metrics.jsonl`` (logged after the checkpoint a resume
    starts from, so they will be logged again); returns how many were dropped."""
    path = Path(run_path) / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line]
    keep = [line for line in lines if (r := json.loads(line)).get("prefix") != prefix or r["step"] <= step]
    if len(keep) < len(lines):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
    return len(lines) - len(keep)
