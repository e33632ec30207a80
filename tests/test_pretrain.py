"""``newtonrl pretrain``: a step budget gives the same SFT checkpoint every time, and training lowers the loss."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch
from safetensors.torch import load_file

from pipeline.cli import main

ARGS = ["--resolution", "16", "--frames", "8", "--batch", "4", "--threads", "1", "--lr", "1e-3"]


def test_step_budget_is_reproducible_and_training_lowers_the_loss(tmp_path):
    for name in ("a", "b"):
        assert main(["pretrain", "--out", str(tmp_path / name), "--steps", "40", *ARGS]) == 0
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["pretrain_steps"] == 40
    with open(tmp_path / "a" / "loss.csv") as fh:
        loss = np.array([float(r["loss"]) for r in csv.DictReader(fh)])
    assert len(loss) == 40 and loss[-10:].mean() < 0.7 * loss[:5].mean()


def test_bad_budget_is_refused_before_work(tmp_path):
    assert main(["pretrain", "--out", str(tmp_path / "x"), "--steps", "0", *ARGS]) == 2
    assert not (tmp_path / "x").exists()
