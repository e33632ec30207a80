"""A real local Ray head (loopback dashboard, token auth), `ray job submit` of the debug config, run dir checked.

The head is stopped by ending exactly the processes that belong to it (its temp dir / port): `ray stop` would
also stop every other Ray instance of this user on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray.job_submission")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def stop_head(temp_dir: str, port: int) -> None:
    """Terminate the processes of the head started with ``temp_dir`` / GCS ``port``, and their children."""

    def ours(cmd: list[str]) -> bool:
        return any(temp_dir in a or (a.endswith(f":{port}") and "ray" in " ".join(cmd)) for a in cmd)

    roots = [p for p in psutil.process_iter(["cmdline"]) if ours(p.info["cmdline"] or [])]
    procs = {p.pid: p for p in roots}
    for p in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.update({c.pid: c for c in p.children(recursive=True)})
    procs.pop(os.getpid(), None)
    for p in procs.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


@pytest.fixture
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    gcs, dash, client, agent = free_ports(4)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(BIN / "ray"), "start", "--head", "--port", str(gcs), "--temp-dir", temp_dir, "--num-cpus", "2",
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent)]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=90)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        stop_head(temp_dir, gcs)
        shutil.rmtree(temp_dir, ignore_errors=True)  # also the ray_current_cluster leftover


def test_job_submit_runs_the_debug_config(ray_head, tmp_path):
    url, env = ray_head
    env = {**env, "RAY_AUTH_MODE": "token"}  # the head enables token auth; the client must send the token
    out = tmp_path / "runs"
    job = f"newtonrl-test-{int(time.time())}"
    submit = [str(BIN / "ray"), "job", "submit", "--address", url, "--submission-id", job, "--working-dir", ".",
              "--runtime-env", "configs/runtime_env.yaml", "--", "newtonrl", "train", "configs/control/debug.yaml",
              "--out-dir", str(out), "--no-progress"]
    done = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = subprocess.run([str(BIN / "python"), "-c", "import sys; from ray.job_submission import "
                             "JobSubmissionClient as C; print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)", url,
                             job], env=env, capture_output=True, text=True, timeout=60)
    assert status.stdout.strip().splitlines()[-1] == "SUCCEEDED", status.stdout + status.stderr
    (run,) = out.iterdir()
    summary = json.loads((run / "summary.json").read_text())["control"]
    assert summary["iterations"] == 6 and summary["system"] == "example2"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6
    assert sorted(p.name for p in (run / "checkpoints" / "control").iterdir()) == ["step-00000004", "step-00000006"]


@pytest.mark.parametrize("name", ["local", "aws"])
def test_cluster_configs_pass_the_launcher_schema(name):
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "configs" / "cluster" / f"{name}.yaml").read_text())
    validate_config(prepare_config(config))  # raises on unknown / missing keys
    setup = " ; ".join(config["setup_commands"])
    assert 'install -q "torch==2.13.0"' in setup and "install -q -e ~/newtonrl" in setup
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
