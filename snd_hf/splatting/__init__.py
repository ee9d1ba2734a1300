"""Splatting teacher: Gaussians, lifting, feature rendering, mask operations and the teacher operator.

Cameras live in :mod:`snd_hf.cameras`.
"""

from .gaussians import Gaussians
from .lifters import DepthLifter, Lifter
from .masks import blend_with_mask, mask_aware_upsample, resize_masks
from .mvsplat import MVSplatLifter
from .render import (
    CompositingWeights,
    RenderOutput,
    compositing_weights,
    render_features,
)
from .teacher import OperatorCache, SplatTeacher, TeacherOperator, TeacherTargets
from .upsampling import upsample_features

__all__ = [
    "CompositingWeights",
    "DepthLifter",
    "Gaussians",
    "Lifter",
    "MVSplatLifter",
    "OperatorCache",
    "RenderOutput",
    "SplatTeacher",
    "TeacherOperator",
    "TeacherTargets",
    "blend_with_mask",
    "compositing_weights",
    "mask_aware_upsample",
    "render_features",
    "resize_masks",
    "upsample_features",
]
