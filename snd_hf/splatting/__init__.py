"""Splatting teacher: cameras, Gaussians, lifting, feature rendering and mask operations."""
from .mvsplat import MVSplatLifter
