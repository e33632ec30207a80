"""Typed run configuration: YAML -> frozen pydantic models, validated before any work starts.

Every field is documented where it is declared. Unknown keys and bad values raise :class:`ConfigError` naming the
dotted key, the value and what was expected; the CLI turns that into one line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

ODE_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


class Strict(BaseModel):
    """Base: unknown keys are rejected, objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RunSection(Strict):
    name: str = "run"  # run directory is <out_dir>/<name>-<UTC timestamp>
    out_dir: str = "runs"  # parent folder of run directories
    seed: int = 0  # base seed; worker i uses seed + i


class RuntimeSection(Strict):
    use_ray: bool = True  # False: every role runs in-process (same numbers, easier debugging)
    address: str | None = None  # Ray address to join; None: $RAY_ADDRESS, else a local Ray started by the program
    num_cpus: int | None = Field(None, ge=1)  # CPUs of a locally started Ray (None: all)
    num_rollout_workers: int = Field(1, ge=1)  # rollout actors
    num_reward_workers: int = Field(1, ge=1)  # reward actors
    cpus_per_worker: float = Field(0.5, gt=0)  # Ray CPU resource per rollout/reward actor
    max_restarts: int = Field(2, ge=0)  # restarts of a crashed actor; its work is re-done
    include_dashboard: bool = False  # start the Ray dashboard with a local Ray (loopback only)
    gpus_per_rollout_worker: float = Field(0.0, ge=0)  # GPU per rollout actor; a fraction (0.5) shares one GPU
    gpus_per_reward_worker: float = Field(0.0, ge=0)  # GPU per reward actor; a fraction (0.5) shares one GPU
    colocate: bool = False  # rollout actor i and reward actor i share one placement bundle (same node and GPU)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # Ray placement group
    placement_timeout_s: float = Field(60.0, gt=0)  # wait this long for the resources, then fail naming the shortfall
    num_learners: int = Field(0, ge=0)  # learner processes (torch.distributed group); 0: in-process in the driver
    cpus_per_learner: float = Field(1.0, gt=0)  # Ray CPU per learner process
    gpus_per_learner: float = Field(0.0, ge=0)  # GPU per learner process (NCCL when > 0, gloo on CPU)
    learner_strategy: Literal["ddp", "fsdp"] = "ddp"  # data parallel replicas, or sharded (FSDP) with num_learners > 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast dtype inside the learners (accelerate)
    grad_accumulation: int = Field(1, ge=1)  # micro-batches per optimizer step inside each learner
    async_rollouts: bool = False  # True: rollouts for step k+1 overlap learning on step k (video track)
    max_staleness: int = Field(1, ge=0)  # async: a batch may be sampled by a policy at most this many versions old


class CheckpointSection(Strict):
    every: int = Field(10, ge=0)  # save a checkpoint every this many steps (policy iterations); 0: only at the end
    keep_last: int = Field(2, ge=1)  # checkpoints kept in <run>/checkpoints; older ones are deleted after a save


class SystemSection(Strict):
    name: str = "example1"  # registry name (example1, example2, linear, cos_nonlinear, ...) or "pkg.module:Class"
    params: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the system (e.g. A, B, Q, R, x0)


class ControlRolloutSection(Strict):
    interval: float = Field(0.1, gt=0)  # T: length of one integration interval (s)
    intervals: int = Field(10, ge=1)  # M: intervals per policy-evaluation step (split across streams/workers)
    nodes: int = Field(10, ge=2)  # N: evenly spaced quadrature nodes per interval, both ends included
    method: str = "RK45"  # scipy solve_ivp method
    rtol: float = Field(1e-8, gt=0)  # solver relative tolerance
    atol: float = Field(1e-8, gt=0)  # solver absolute tolerance
    protocol: Literal["continuing", "restart"] = "continuing"  # continuing: the authors' (trajectory goes on
    # across iterations); restart: every iteration starts again from the initial states (keeps excitation)
    initial_states: list[list[float]] | None = None  # explicit x0 per stream; None: see num_initial_states
    num_initial_states: int = Field(1, ge=1)  # streams; 1 = the system's x0, more = x0 plus random states
    initial_state_radius: float = Field(1.0, gt=0)  # extra random initial states: |x| = radius * |x0| (or radius)
    blowup_norm: float = Field(1e6, gt=0)  # |x| above this means the policy is not admissible: stop with an error

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value not in ODE_METHODS:
            raise ValueError(f"expected one of {', '.join(ODE_METHODS)}")
        return value


class QuadratureSection(Strict):
    rule: str = "trapezoid"  # trapezoid, simpson, bq-wiener, bq-matern{12,32,52,72}, bsq-matern{12,32,52,72}
    lengthscale: float = 0.3  # kernel lengthscale (s) for the bq-/bsq- rules
    degree: int | None = None  # Bayes-Sard: polynomial degree of the prior mean (None: rule default)
    precision: Literal["exact", "float64"] = "exact"  # exact: extended-precision weights; float64: authors' solve
    jitter: float = Field(1e-8, ge=0)  # added to the Gram diagonal with precision=float64

    def params(self) -> dict[str, Any]:
        """Keyword parameters for :func:`rewards.quadrature.weights` (only those that the rule takes)."""
        if not self.rule.startswith(("bq-", "bsq-")) or self.rule == "bq-wiener":
            return {}
        out: dict[str, Any] = {"lengthscale": self.lengthscale, "precision": self.precision, "jitter": self.jitter}
        if self.rule.startswith("bsq-") and self.degree is not None:
            out["degree"] = self.degree
        return out


class IterationSection(Strict):
    tol: float = Field(1e-3, gt=0)  # stop when |w_i - w_{i-1}|_2 < tol
    max_iterations: int = Field(120, ge=1)  # policy-iteration cap
    solver: Literal["pinv", "lstsq", "newton_schulz", "cg", "bcd"] = "pinv"  # least squares of policy evaluation:
    # pinv/lstsq (numpy SVD; the default, fastest for p <~ 4000 per `newtonrl bench solvers`), newton_schulz
    # (normal equations, warm-started from the previous iteration's inverse, Cholesky/pinv fallback), cg, bcd (greedy
    # Gauss-Southwell-Lipschitz block coordinate descent; for large feature dictionaries)
    rcond: float = Field(1e-10, gt=0)  # relative singular-value cut for rank decisions (excitation check)
    initial_weights: list[float] | None = None  # w0 in the value basis (u0 = -1/2 R^-1 g' dphi' w0)
    initial_gain: list[list[float]] | None = None  # K0 (u0 = -K0 x); overrides initial_weights
    initializer: Literal["given", "homotopy"] = "given"  # given: start from initial_weights / initial_gain (must be
    # admissible); homotopy: continuation from the shifted system f(x) - s x down to s = 0 (pipeline.homotopy)
    homotopy_stages: int = Field(4, ge=1)  # planned continuation stages (a step is halved while not admissible)
    homotopy_margin: float = Field(0.5, gt=0)  # s0 = initial closed-loop stability abscissa + margin (1/s)
    homotopy_stage_tol: float = Field(1e-2, gt=0)  # tol of the intermediate stages (the last one uses tol)


class EvaluationSection(Strict):
    policy_samples: int = Field(512, ge=1)  # states sampled for E|u - u*|
    sample_radius: float = Field(1.0, gt=0)  # states uniform in the box [-r, r]^n


class ControlSection(Strict):
    system: SystemSection = SystemSection()
    rollout: ControlRolloutSection = ControlRolloutSection()
    quadrature: QuadratureSection = QuadratureSection()
    iteration: IterationSection = IterationSection()
    evaluation: EvaluationSection = EvaluationSection()

    @model_validator(mode="after")
    def _rule(self) -> ControlSection:
        from rewards.quadrature import check_rule_params

        check_rule_params(self.quadrature.rule, self.rollout.nodes, prefix="control.quadrature",
                          nodes_key="control.rollout.nodes", **self.quadrature.params())
        return self


class Config(Strict):
    run: RunSection = RunSection()
    runtime: RuntimeSection = RuntimeSection()
    checkpoint: CheckpointSection = CheckpointSection()  # resume with `newtonrl train --resume RUN_DIR`
    control: ControlSection | None = None  # control track (IntRL); omit to skip
    video: dict[str, Any] | None = None  # video track (NewtonRewards); validated by pipeline.video_track

    @model_validator(mode="after")
    def _video(self) -> Config:
        if self.video is not None:  # validated here so that a bad video key fails before the control track runs
            from pipeline.video_config import check_runtime, parse_video_section

            check_runtime(parse_video_section(self.video), self.runtime)
        return self


def _format_error(err: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown config key '{key}'"
    msg = err["msg"].removeprefix("Value error, ")
    return f"config key '{key}': {msg} (got {err.get('input')!r})"


def parse_config(data: dict[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config`; raises ConfigError naming the bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("; ".join(_format_error(e) for e in exc.errors())) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested dict, returning a new dict."""
    out = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return parse_config(apply_overrides(data, overrides or []))


def dump_config(config: Config) -> str:
    """The resolved config as YAML (written to every run directory)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
