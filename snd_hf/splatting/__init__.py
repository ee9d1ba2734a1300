"""Splatting teacher: cameras, Gaussians, lifting, feature rendering and mask operations."""

from .gaussians import Gaussians
from .lifters import DepthLifter, Lifter
from .masks import blend_with_mask, mask_aware_upsample, resize_masks
from .mvsplat import MVSplatLifter
from .render import RenderOutput, render_features
from .teacher import SplatTeacher, TeacherTargets, patch_features

__all__ = [
    "DepthLifter",
    "Gaussians",
    "Lifter",
    "MVSplatLifter",
    "RenderOutput",
    "SplatTeacher",
    "TeacherTargets",
    "blend_with_mask",
    "mask_aware_upsample",
    "patch_features",
    "render_features",
    "resize_masks",
]
