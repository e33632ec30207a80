"""Shifted dynamics f(x) - s x for homotopy continuation: the same system made more stable by s (1/s).

Shifting every closed-loop eigenvalue at the origin by -s makes any policy admissible for s large enough; walking
s -> 0 recovers the real system. Input matrix, utility and value basis are the base system's, so a policy
(value weights) of one stage is a valid warm start for the next.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.control.base import ControlSystem
from pipeline.errors import ConfigError


class ShiftedSystem(ControlSystem):
    """dx/dt = f(x) - shift * x + g(x) u, with ``base`` a registered system name (or ``module:Class``)."""

    name = "shifted"

    def __init__(self, base: str, shift: float, base_params: dict[str, Any] | None = None) -> None:
        from envs.control.registry import make_system

        if not np.isfinite(shift) or shift < 0:
            raise ConfigError(f"config key 'control.system.params.shift': expected a finite number >= 0, got {shift!r}")
        self.base = make_system(base, base_params or {})
        self.shift = float(shift)
        self.name = f"{self.base.name}-shift{self.shift:.4g}"
        self.Q, self.R, self.x0 = self.base.Q, self.base.R, self.base.x0

    def f(self, x: np.ndarray) -> np.ndarray:
        return self.base.f(x) - self.shift * x

    def g(self, x: np.ndarray) -> np.ndarray:
        return self.base.g(x)

    def phi(self, x: np.ndarray) -> np.ndarray:
        return self.base.phi(x)

    def grad_phi(self, x: np.ndarray) -> np.ndarray:
        return self.base.grad_phi(x)

    def initial_weights(self) -> np.ndarray:
        return self.base.initial_weights()
