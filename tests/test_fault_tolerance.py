"""Dead actors are restarted and their work re-done: same steps, same numbers, one log line per incident."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import pipeline.control_track as control_track  # noqa: E402
from pipeline.config import RuntimeSection, parse_config  # noqa: E402
from pipeline.control_track import run_control  # noqa: E402
from pipeline.runtime import BatchStream, make_pool, ray_session  # noqa: E402
from pipeline.weights import WeightSync, apply_message, weights_message  # noqa: E402
from rewards.policy_eval import PolicyEvaluator  # noqa: E402
from rollouts.control import ControlRolloutWorker  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test roles travel to the workers by value


def die_once(marker: str) -> None:
    """Kill this process (as a crash would) the first time it is called while ``marker`` exists."""
    try:
        os.remove(marker)  # atomic: of workers racing for the marker, exactly one dies
    except FileNotFoundError:
        return
    os._exit(1)


class DyingRollout(ControlRolloutWorker):
    marker = ""

    def rollout(self, policy, starts, counts):
        if policy.version == 2:
            die_once(self.marker)
        return super().rollout(policy, starts, counts)


class DyingEvaluator(PolicyEvaluator):
    marker = ""

    def score(self, batch):
        if batch.policy_version == 3:
            die_once(self.marker)
        return super().score(batch)


class Slow:
    def __init__(self, worker_index: int = 0) -> None:
        self.index = worker_index

    def work(self, x: int) -> tuple[int, int]:
        time.sleep(0.3)
        return x * x, os.getpid()


class Policy:
    """Rollout role holding versioned weights; dies once (marker) on a marked step."""

    marker = ""

    def __init__(self, worker_index: int = 0) -> None:
        import torch

        torch.manual_seed(0)
        self.model, self.version = torch.nn.Linear(2, 2), 0  # = weights(0)

    def set_weights(self, message) -> int:
        self.version = apply_message(self.model, message, self.version)
        return self.version

    def rollout(self, step: int) -> tuple[int, int, float]:
        if step == 2:
            die_once(self.marker)
        return step, self.version, float(self.model.weight.detach().sum())

    def score(self, batch):
        return batch


RUNTIME = {"use_ray": True, "num_cpus": 2, "num_rollout_workers": 2, "num_reward_workers": 2, "max_restarts": 2}


@pytest.fixture(scope="module")
def ray_cluster():
    with ray_session(RuntimeSection(**RUNTIME)):
        yield


def control(runtime):
    return parse_config({"runtime": runtime, "control": {
        "system": {"name": "example2"}, "iteration": {"max_iterations": 5, "tol": 1e-12},
        "rollout": {"nodes": 7, "intervals": 12, "protocol": "restart", "num_initial_states": 3}}})


def test_killed_rollout_and_reward_actors_are_restarted(ray_cluster, tmp_path, monkeypatch, caplog):
    local = run_control(control({"use_ray": False}).control, control({"use_ray": False}).runtime, progress=False)
    DyingRollout.marker, DyingEvaluator.marker = str(tmp_path / "rollout"), str(tmp_path / "reward")
    for marker in (DyingRollout.marker, DyingEvaluator.marker):
        open(marker, "w").close()
    monkeypatch.setattr(control_track, "ControlRolloutWorker", DyingRollout)
    monkeypatch.setattr(control_track, "PolicyEvaluator", DyingEvaluator)
    cfg = control(RUNTIME)
    with caplog.at_level(logging.WARNING, logger="pipeline.runtime"):
        remote = run_control(cfg.control, cfg.runtime, progress=False)
    assert not os.path.exists(DyingRollout.marker) and not os.path.exists(DyingEvaluator.marker)  # both died
    deaths = [r.getMessage() for r in caplog.records if "died during" in r.getMessage()]
    assert any(m.startswith("DyingRollout worker") and "during rollout" in m for m in deaths), deaths
    assert any(m.startswith("DyingEvaluator worker") and "during score" in m for m in deaths), deaths
    assert remote.summary["iterations"] == local.summary["iterations"] == 5
    assert [h["weight_change"] for h in remote.history] == [h["weight_change"] for h in local.history]
    np.testing.assert_array_equal(remote.weights, local.weights)


def test_ray_kill_with_restart_mid_call(ray_cluster, caplog):
    pool = make_pool(Slow, 2, runtime=RuntimeSection(**RUNTIME))
    try:
        before = {pid for _, pid in pool.map("work", [(0,), (1,)])}
        out = {}
        thread = threading.Thread(target=lambda: out.update(r=pool.map("work", [(i,) for i in range(6)])))
        with caplog.at_level(logging.WARNING, logger="pipeline.runtime"):
            thread.start()
            time.sleep(0.15)  # the first calls are running
            ray.kill(pool.workers[1], no_restart=False)
            thread.join(timeout=60)
        assert [sq for sq, _ in out["r"]] == [i * i for i in range(6)]
        after = {pid for _, pid in out["r"]}
        assert len(after - before) == 1  # worker 1 is a new process, worker 0 the same
        assert any("Slow worker 1 died during work" in r.getMessage() for r in caplog.records)
    finally:
        pool.close()


def test_gives_up_after_max_restarts(ray_cluster, tmp_path):
    class AlwaysDies:
        def __init__(self, worker_index: int = 0) -> None:
            pass

        def work(self) -> None:
            os._exit(1)

    pool = make_pool(AlwaysDies, 1, runtime=RuntimeSection(**{**RUNTIME, "max_restarts": 1}))
    try:
        with pytest.raises(ray.exceptions.RayActorError):
            pool.call("work")
    finally:
        pool.close()


def weights(version: int):
    import torch

    torch.manual_seed(version)
    return weights_message(torch.nn.Linear(2, 2), version)


def test_restarted_worker_gets_the_current_weights_again(ray_cluster, tmp_path, caplog):
    Policy.marker = str(tmp_path / "die")
    open(Policy.marker, "w").close()
    pool = make_pool(Policy, 2, runtime=RuntimeSection(**RUNTIME))
    sync = WeightSync(pool)
    try:
        sync.push(weights(1))
        sync.push(weights(2))
        with caplog.at_level(logging.WARNING):
            out = pool.map("rollout", [(2,), (2,)])  # a worker dies, restarts from its constructor (version 0)
        expected = float(weights(2).tensors["weight"].sum())
        assert [(v, w) for _, v, w in out] == [(2, pytest.approx(expected))] * 2
        assert any("re-sending weights v2 to restarted worker" in r.getMessage() for r in caplog.records)
    finally:
        pool.close()


def stream_run(runtime: RuntimeSection, steps: int = 5) -> list:
    rollouts = make_pool(Policy, 2, runtime=runtime)
    rewards = make_pool(Policy, 1, runtime=runtime, kind="reward")
    sync = WeightSync(rollouts, initial=weights(0))
    stream = BatchStream(rollouts, rewards, lambda k: [(k,), (k,)], max_staleness=1, sync=sync)
    try:
        seen = []
        for k in range(steps):
            seen.append(stream.get(k, last=steps))
            sync.push(weights(k + 1), wait=False)  # the learner's update on step k
        return seen
    finally:
        rollouts.close()
        rewards.close()


def test_async_stream_redoes_lost_steps_with_their_weights(ray_cluster, tmp_path, caplog):
    Policy.marker = str(tmp_path / "die")  # absent: the in-process reference never dies
    reference = stream_run(RuntimeSection(use_ray=False))
    assert [[v for _, v, _ in batch] for batch in reference] == [[0, 0], [0, 0], [1, 1], [2, 2], [3, 3]]
    open(Policy.marker, "w").close()
    with caplog.at_level(logging.WARNING):
        seen = stream_run(RuntimeSection(**RUNTIME))
    assert not os.path.exists(Policy.marker)  # a worker did die (on step 2, sampled by policy v1)
    assert any("step 2 lost a worker" in r.getMessage() for r in caplog.records)
    assert seen == reference  # same steps, same policy versions, same numbers
