"""Lifters: context views → one 3D Gaussian per context pixel.

Every lifter takes the ``context`` part of a scene batch (see :mod:`snd_hf.data`) and returns
:class:`~snd_hf.splatting.gaussians.Gaussians` ordered ``b (v h w)``, so the teacher's
upsampled features of the context views attach to them one to one.
"""

from __future__ import annotations

import torch
from torch import nn

from .gaussians import Gaussians


class Lifter(nn.Module):
    """Interface of every lifter (frozen during SnD training).

    ``forward(context)`` reads ``context["image"]`` [B, V, 3, H, W] in [0, 1],
    ``context["extrinsics"]`` [B, V, 4, 4], ``context["intrinsics"]`` [B, V, 3, 3],
    ``context["near"]`` / ``context["far"]`` [B, V] and, for lifters that need it,
    ``context["depth"]`` [B, V, H, W]; it returns Gaussians with ``G = V * H * W``.
    """

    def forward(self, context: dict[str, torch.Tensor]) -> Gaussians:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(context) -> Gaussians")
