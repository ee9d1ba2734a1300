"""Frozen-feature probes: depth, surface normals, segmentation and correspondence."""
