"""Resources per role -> placement-group bundles; colocation on one GPU; shortfalls name requested vs available."""

from __future__ import annotations

import os
import sys

import pytest

from pipeline.config import RuntimeSection
from pipeline.errors import ConfigError
from pipeline.runtime import (
    BatchStream,
    LocalPool,
    Placement,
    check_fits,
    make_pool,
    plan_bundles,
    role_resources,
)

ray = pytest.importorskip("ray")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_bundles_per_worker_and_colocated_pairs():
    rt = RuntimeSection(num_rollout_workers=2, num_reward_workers=3, cpus_per_worker=0.5, gpus_per_rollout_worker=0.5,
                        gpus_per_reward_worker=0.25, num_learners=2, gpus_per_learner=1.0, colocate=True)
    bundles, index = plan_bundles(role_resources(rt), colocate=True)
    assert index == {"rollout": [0, 1], "reward": [0, 1, 2], "learner": [3, 4]}
    assert bundles[0] == bundles[1] == {"CPU": 1.0, "GPU": 0.75}  # rollout + reward share a bundle
    assert bundles[2] == {"CPU": 0.5, "GPU": 0.25}  # the third reward worker has no rollout partner
    assert bundles[3] == bundles[4] == {"CPU": 1.0, "GPU": 1.0}
    apart, index = plan_bundles(role_resources(rt), colocate=False)
    assert len(apart) == 7 and index["reward"] == [2, 3, 4]
    total = {k: sum(b.get(k, 0) for b in apart) for k in ("CPU", "GPU")}
    assert total == {k: sum(b.get(k, 0) for b in bundles) for k in ("CPU", "GPU")} == {"CPU": 4.5, "GPU": 3.75}


def test_shortfall_names_requested_and_available():
    bundles, _ = plan_bundles(role_resources(RuntimeSection(num_rollout_workers=4, gpus_per_rollout_worker=0.5,
                                                            cpus_per_worker=1.0)), colocate=False)
    with pytest.raises(ConfigError, match=r"5 CPU requested, 2 available; 2 GPU requested, 0 available"):
        check_fits(bundles, {"CPU": 2.0})
    check_fits(bundles, {"CPU": 5.0, "GPU": 2.0})


def test_in_process_needs_no_placement():
    rt = RuntimeSection(use_ray=False, num_rollout_workers=3)
    assert Placement.reserve(rt) is None
    pool = make_pool(Where, 3, runtime=rt)
    assert isinstance(pool, LocalPool) and pool.broadcast("index") == [0, 1, 2]


class Where:
    """Reports where Ray put it."""

    def __init__(self, worker_index: int = 0) -> None:
        self.worker_index = worker_index

    def index(self) -> int:
        return self.worker_index

    def place(self) -> tuple[str | None, list, int]:
        ctx = ray.get_runtime_context()
        return ctx.get_placement_group_id(), [str(g) for g in ray.get_gpu_ids()], os.getpid()


@pytest.fixture(scope="module")
def ray_gpu():
    """A local Ray with 2 CPUs and one logical GPU (Ray only does the bookkeeping; no CUDA is touched)."""
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_colocated_roles_share_one_gpu_in_the_placement_group(ray_gpu):
    rt = RuntimeSection(num_rollout_workers=1, num_reward_workers=1, gpus_per_rollout_worker=0.5,
                        gpus_per_reward_worker=0.5, colocate=True)
    placement = Placement.reserve(rt)
    try:
        assert placement.bundles == [{"CPU": 1.0, "GPU": 1.0}]
        pools = [make_pool(Where, 1, runtime=rt, kind=kind, placement=placement) for kind in ("rollout", "reward")]
        (pg_a, gpu_a, pid_a), (pg_b, gpu_b, pid_b) = (pool.call("place") for pool in pools)
        assert pg_a == pg_b == placement.group.id.hex()
        assert gpu_a == gpu_b == ["0"] and pid_a != pid_b  # two processes on one (logical) GPU
        for pool in pools:
            pool.close()
    finally:
        placement.close()


def test_placement_shortfall_is_reported_before_work(ray_gpu):
    rt = RuntimeSection(num_rollout_workers=2, num_reward_workers=1, gpus_per_rollout_worker=1.0)
    with pytest.raises(ConfigError, match=r"2 GPU requested, 1 available"):
        Placement.reserve(rt)
    spread = RuntimeSection(num_rollout_workers=1, num_reward_workers=1, placement_strategy="STRICT_SPREAD",
                            placement_timeout_s=1)  # fits in total, but one node cannot hold both bundles
    with pytest.raises(ConfigError, match=r"could not place .*STRICT_SPREAD.*requested bundles"):
        Placement.reserve(spread)
    assert ray.util.placement_group_table() and all(
        pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


class Versioned:
    """Rollout role whose sample is (step, policy version it was sampled with)."""

    def __init__(self, worker_index: int = 0) -> None:
        self.version = 0

    def set_weights(self, version: int) -> int:
        self.version = version
        return version

    def rollout(self, step: int) -> tuple[int, int]:
        return step, self.version

    def score(self, batch: tuple[int, int]) -> tuple[int, int]:
        return batch


def stream_versions(runtime: RuntimeSection, staleness: int, steps: int = 5) -> list:
    rollouts = make_pool(Versioned, 2, runtime=runtime)
    rewards = make_pool(Versioned, 1, runtime=runtime, kind="reward")
    stream = BatchStream(rollouts, rewards, lambda k: [(k,), (k,)], max_staleness=staleness)
    seen = []
    for k in range(steps):
        seen.append(stream.get(k, last=steps))
        rollouts.broadcast("set_weights", k + 1, wait=staleness == 0)  # the learner's update on step k
    rollouts.close()
    rewards.close()
    return seen


@pytest.mark.parametrize("staleness", [0, 1, 2])
def test_batch_stream_bounds_staleness_and_matches_in_process(ray_gpu, staleness):
    expected = [[(k, max(k - staleness, 0))] * 2 for k in range(5)]  # step k sampled by policy k - s
    assert stream_versions(RuntimeSection(use_ray=False), staleness) == expected
    assert stream_versions(RuntimeSection(), staleness) == expected


class Slow(Versioned):
    """A Versioned role whose weights are slow to ship (pickled on the driver's sender thread) and may be bad."""

    def set_weights(self, version) -> int:  # noqa: ANN001 - int or Payload
        if getattr(version, "bad", False):
            raise ValueError("weights do not fit the model")
        return super().set_weights(int(version))


class Payload(int):
    """A version that takes 0.3 s to pickle, so the driver outruns the sender thread."""

    bad = False

    def __reduce__(self) -> tuple:
        import time

        time.sleep(0.3)
        return (_payload, (int(self), self.bad))


def _payload(version: int, bad: bool) -> Payload:
    out = Payload(version)
    out.bad = bad
    return out


def test_queued_pushes_keep_the_driver_order_and_their_errors_surface(ray_gpu):
    import time

    pool = make_pool(Slow, 2, runtime=RuntimeSection())
    try:
        t0 = time.perf_counter()
        pool.broadcast("set_weights", Payload(1), wait=False)
        assert time.perf_counter() - t0 < 0.2  # the driver goes on while the sender thread pickles and submits
        assert pool.map("rollout", [(0,), (0,)]) == [(0, 1), (0, 1)]  # ... yet every call sees the push before it
        bad = Payload(2)
        bad.bad = True
        pool.broadcast("set_weights", bad, wait=False)
        with pytest.raises(ray.exceptions.RayTaskError, match="weights do not fit the model"):
            pool.map("rollout", [(1,), (1,)])  # not lost: the failed push is raised at the next call
    finally:
        pool.close()


class Traced(int):
    """A version that records the thread it was unpickled on (slowly: 0.3 s)."""

    thread = 0

    def __reduce__(self) -> tuple:
        return (_traced, (int(self),))


def _traced(version: int) -> Traced:
    import threading
    import time

    time.sleep(0.3)
    out = Traced(version)
    out.thread = threading.get_ident()
    return out


class Staging(Versioned):
    """A Versioned role that can be kept busy and tells which thread unpickled its weights and which samples."""

    def set_weights(self, version: Traced) -> int:
        self.unpickled_on = version.thread
        return super().set_weights(int(version))

    def work(self, seconds: float) -> None:
        import time

        time.sleep(seconds)

    def rollout(self, step: int) -> tuple[int, int, bool]:
        import threading

        return step, self.version, self.unpickled_on == threading.get_ident()


def test_a_busy_worker_stages_a_push_while_it_works_and_an_idle_one_fetches_it_itself(ray_gpu):
    pool = make_pool(Staging, 1, runtime=RuntimeSection())
    try:
        pool.broadcast("set_weights", Traced(1), wait=False)
        assert pool.map("rollout", [(0,)]) == [(0, 1, True)]  # idle: fetched by the call that needs it
        busy = pool.submit("work", [(2.0,)])
        pool.broadcast("set_weights", Traced(2), wait=False)
        assert pool.map("rollout", [(1,)]) == [(1, 2, False)]  # busy: unpickled on the staging thread meanwhile
        pool.resolve(busy)
    finally:
        pool.close()
