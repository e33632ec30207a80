"""Continuous-time control-affine systems for the IntRL control track."""

from envs.control.base import ControlSystem, gain_input, policy_input
from envs.control.linear import Example1, LinearSystem
from envs.control.nonlinear import CosNonlinear, Example2
from envs.control.registry import SYSTEMS, make_system, register

__all__ = [
    "SYSTEMS",
    "ControlSystem",
    "CosNonlinear",
    "Example1",
    "Example2",
    "LinearSystem",
    "gain_input",
    "make_system",
    "policy_input",
    "register",
]
