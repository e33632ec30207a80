"""Bad configs and inputs: one clear line naming the key, exit code 2, before any work starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main

EX1 = {"runtime": {"use_ray": False}, "control": {"system": {"name": "example1"}}}


def write(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["control.rollout.nodes=1"], "control.rollout.nodes"),
        (["control.quadrature.rule=simpson", "control.rollout.nodes=10"], "odd"),
        (["control.quadrature.rule=gauss"], "trapezoid"),  # lists the valid rules
        (["control.quadrature.rule=bq-matern52", "control.quadrature.lengthscale=0"], "lengthscale"),
        (["control.rollout.method=Euler"], "RK45"),
        (["control.bogus=1"], "unknown config key 'control.bogus'"),
        (["control.system.name=linear", "control.system.params={A: [[0, 1], [2]], B: [0, 1]}"], "system.params.A"),
        (["control.system.name=linear", "control.system.params={A: [[0, 1], [-1, -1]], B: [0, 1, 2]}"],
         "system.params.B"),
        (["control.system.name=nosuchmod.sub:Cls"], "cannot import module 'nosuchmod.sub'"),
        (["control.system.name=os:NoClass"], "has no 'NoClass'"),
        (["control.system.name=nonsense"], "unknown system 'nonsense'"),
        (["control.rollout.intervals=3"], "rank deficient: 3 intervals for 6 independent basis functions"),
        (["control.system.name=cos_nonlinear", "control.iteration.initial_weights=[0, 0, 0]"], "not admissible"),
        (["control.iteration.initial_gain=[[1, 2]]"], "initial_gain"),
    ],
)
def test_bad_config_exits_2_with_clear_message(tmp_path, capsys, overrides, expected):
    args = ["train", write(tmp_path, EX1), "--out-dir", str(tmp_path / "runs"), "--no-progress"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("newtonrl: error:") and "\n" not in err and "Traceback" not in err
    assert expected in err


def test_missing_config_file(capsys):
    assert main(["train", "/nonexistent/cfg.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_real_process_exit_code_and_no_traceback(tmp_path):
    cfg = write(tmp_path, {**EX1, "control": {"quadrature": {"rule": "bq-matern72", "lengthscale": -1}}})
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", cfg], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "lengthscale" in proc.stderr


def test_train_writes_run_directory(tmp_path):
    cfg = write(tmp_path, {**EX1, "control": {"rollout": {"nodes": 5}}, "run": {"name": "t"}})
    assert main(["train", cfg, "--out-dir", str(tmp_path / "runs"), "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.md", "plots/control_convergence.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    import json

    summary = json.loads((run / "summary.json").read_text())["control"]
    assert summary["converged"] and summary["rule"] == "trapezoid" and summary["N"] == 5
    assert summary["weight_error"] == pytest.approx(1.18e-3, rel=0.05)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["video.data.group_size=1"], "group_size = 1"),
        (["video.model.path=/nonexistent/model"], "model path /nonexistent/model"),
        (["video.sampler.kind=ddim"], "needs a epsilon model"),
        (["video.learner.algorithm=ppo"], "video.learner.algorithm"),
    ],
)
def test_bad_video_config_fails_before_any_work(tmp_path, capsys, overrides, expected):
    args = ["train", write(tmp_path, {**EX1, "video": {}}), "--out-dir", str(tmp_path / "runs"), "--no-progress"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing ran, no run directory
