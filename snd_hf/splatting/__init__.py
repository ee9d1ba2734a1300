"""Splatting teacher: cameras, Gaussians, lifting, feature rendering and mask operations."""

from .gaussians import Gaussians
from .lifters import Lifter
from .render import RenderOutput, render_features

__all__ = ["Gaussians", "Lifter", "RenderOutput", "render_features"]
