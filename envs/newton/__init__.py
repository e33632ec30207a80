"""NewtonBench-style scenes: closed-form Newtonian motion primitives rendered with OpenCV.

See :mod:`envs.newton.spec` for units and conventions, :mod:`envs.newton.physics` for the closed forms,
:mod:`envs.newton.splits` for the split ranges, :mod:`envs.newton.assets` for the disjoint train/test assets,
:mod:`envs.newton.render` for the renderer and :mod:`envs.newton.dataset` for the file format.
"""

from envs.newton.dataset import (
    VideoRecord,
    load_clip,
    load_record,
    read_dataset,
    read_user_folder,
    read_video,
    write_clip,
)
from envs.newton.physics import trajectory
from envs.newton.prompts import describe
from envs.newton.render import render_clip, render_trajectory
from envs.newton.spec import PRIMITIVES, SPLITS, Clip, SceneSpec
from envs.newton.splits import sample_spec, split_primitives

__all__ = [
    "PRIMITIVES",
    "SPLITS",
    "Clip",
    "SceneSpec",
    "VideoRecord",
    "describe",
    "load_clip",
    "load_record",
    "read_dataset",
    "read_user_folder",
    "read_video",
    "render_clip",
    "render_trajectory",
    "sample_spec",
    "split_primitives",
    "trajectory",
    "write_clip",
]
