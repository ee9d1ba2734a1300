"""Disentangled 3D feature fields: per-scene Gaussians with view-independent and view-dependent parts.

Modules, one concept each: ``scene`` (the posed views and cameras), ``harmonics`` (spherical
harmonics with roughness), ``field`` (the Gaussians, rendering, saving), ``features`` (2D
teachers), ``fit`` (the two-stage fitting), ``segment`` (click selection, highlights, editing),
``evaluate`` (one-click 3D segmentation and highlight benchmarks), ``pictures`` (labelled PNG
panels) and ``cli`` (``snd field``). See ``docs/fields.md``.
"""
