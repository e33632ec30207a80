"""NewtonBench-style scenes: closed-form Newtonian motion primitives rendered with OpenCV.

See :mod:`envs.newton.spec` for units and conventions, :mod:`envs.newton.splits` for the split ranges,
:mod:`envs.newton.assets` for the train/test assets and :mod:`envs.newton.dataset` for the file format.
"""

from envs.newton.physics import trajectory
from envs.newton.render import render_clip, render_trajectory
from envs.newton.spec import PRIMITIVES, SPLITS, Clip, SceneSpec
from envs.newton.splits import sample_spec

__all__ = ["PRIMITIVES", "SPLITS", "Clip", "SceneSpec", "render_clip", "render_trajectory", "sample_spec", "trajectory"]
