"""Splatting teacher: Gaussians, lifting, feature rendering, mask operations and the teacher operator.

Cameras live in :mod:`snd_hf.cameras`.
"""

from .gaussians import Gaussians
from .lifters import DepthLifter, Lifter
from .masks import blend_with_mask, mask_aware_upsample, resize_masks
from .mvsplat import MVSplatLifter
from .operator import TeacherOperator
from .render import (
    CompositingWeights,
    RenderOutput,
    compositing_weights,
    render_features,
)
from .teacher import SplatTeacher, TeacherTargets, patch_features
from .upsampling import upsample_features

__all__ = [
    "CompositingWeights",
    "DepthLifter",
    "Gaussians",
    "Lifter",
    "MVSplatLifter",
    "RenderOutput",
    "SplatTeacher",
    "TeacherOperator",
    "TeacherTargets",
    "blend_with_mask",
    "compositing_weights",
    "mask_aware_upsample",
    "patch_features",
    "render_features",
    "resize_masks",
    "upsample_features",
]
