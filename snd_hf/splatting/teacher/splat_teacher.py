"""The SnD teacher step: context features → 3D Gaussians → target-view feature targets.

:class:`SplatTeacher` turns the teacher's patch features of the context views into per-token
targets for the student in the target views, with a coverage mask:

1. mask-aware upsampling of the context features to the context image size;
2. lifting the context views to one Gaussian per pixel (frozen lifter, no gradients);
3. attaching the upsampled features and rendering them into the target cameras (all channels
   in one pass, with the rendered alpha);
4. blending within the target's instance segments;
5. resampling to the student's patch grid ``(H // patch_size, W // patch_size)``;
6. coverage: tokens whose area-averaged alpha reaches ``coverage_threshold``.

Steps 1 and 3-5 are the stages of :mod:`~snd_hf.splatting.teacher.stages`: :meth:`SplatTeacher.forward`
applies them to the features, :meth:`SplatTeacher.operator` composes their weights into the
cached linear map (:mod:`~snd_hf.splatting.teacher.operator`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...cameras import Cameras
from ..lifters import Lifter
from ..masks import resize_masks
from ..render import Backend
from ..upsampling import UPSAMPLING_MODES, Upsampling
from .operator import TeacherOperator, compose_operator
from .stages import Blend, Resample, Resampling, Splat, Upsample, token_coverage


@dataclass
class TeacherTargets:
    """Feature targets of the target views.

    Attributes:
        features: rendered, blended and resampled teacher features per student token. [B, Vt, C, h, w]
        coverage: tokens the Gaussians cover (area-averaged alpha >= threshold); only these belong
            in the loss. [B, Vt, h, w]
        alpha: rendered alpha at the target image size, or None when the targets come from a
            :class:`~snd_hf.splatting.teacher.operator.TeacherOperator`. [B, Vt, 1, H, W]
    """

    features: torch.Tensor
    coverage: torch.Tensor
    alpha: torch.Tensor | None = None


class SplatTeacher(nn.Module):
    """Renders the teacher's context-view features into the target views (see the module docstring).

    Args:
        lifter: a frozen :class:`~snd_hf.splatting.lifters.Lifter` (MVSplat or depth).
        blending: weight of a pixel's own features when blending with its segment mean; 1.0 = no
            blending, the original with-blending models use 0.5.
        resample: ``"area"`` (antialiased average over each token's pixels, default) or
            ``"bilinear"`` (the original, which aliases).
        coverage_threshold: smallest area-averaged alpha of a covered token.
        mask_aware: ``upsample="original"``: mask-aware upsampling of the context features (the
            original) or plain align-corners bilinear (the paper's ablation).
        upsample: ``"original"`` (align-corners grid, the paper's) or ``"patch_aligned"`` (each
            pixel takes its patch's token); see :mod:`snd_hf.splatting.upsampling`.
        weighted_blending: segment means weighted by the rendered alpha, so uncovered pixels do
            not pull them towards zero; False reproduces the original.
        backend: render backend (see :func:`~snd_hf.splatting.render.render_features`).
        patch_size: the student's patch size (its ``config.patch_size``).
    """

    def __init__(
        self,
        lifter: Lifter,
        *,
        blending: float = 0.5,
        resample: Resampling = "area",
        coverage_threshold: float = 0.5,
        mask_aware: bool = True,
        upsample: Upsampling = "original",
        weighted_blending: bool = True,
        backend: Backend = "auto",
        patch_size: int = 14,
    ):
        super().__init__()
        if not isinstance(lifter, Lifter):
            raise TypeError(f"`lifter` must be a Lifter, got {type(lifter).__name__}.")
        if not 0.0 <= blending <= 1.0:
            raise ValueError(f"`blending` must be in [0, 1], got {blending}.")
        if resample not in ("area", "bilinear"):
            raise ValueError(f"`resample` must be 'area' or 'bilinear', got {resample!r}.")
        if not 0.0 <= coverage_threshold <= 1.0:
            raise ValueError(f"`coverage_threshold` must be in [0, 1], got {coverage_threshold}.")
        if upsample not in UPSAMPLING_MODES:
            raise ValueError(f"`upsample` must be one of {list(UPSAMPLING_MODES)}, got {upsample!r}.")
        self.lifter = lifter.requires_grad_(False)
        self.blending, self.resample, self.coverage_threshold = blending, resample, coverage_threshold
        self.mask_aware, self.upsample, self.weighted_blending = mask_aware, upsample, weighted_blending
        self.backend, self.patch_size = backend, patch_size

    def forward(self, context_features: torch.Tensor, batch: dict) -> TeacherTargets:
        """Teacher targets for ``batch["target"]`` from the context views' patch features.

        Args:
            context_features: teacher patch features of the context views. [B, Vc, C, hc, wc]
            batch: a scene batch (see :mod:`snd_hf.data`) with ``context`` and ``target`` views.

        Returns:
            :class:`TeacherTargets` with features [B, Vt, C, h, w], coverage [B, Vt, h, w] and
            alpha [B, Vt, 1, H, W], where ``(h, w) = (H // patch_size, W // patch_size)`` of the
            target images.
        """
        batch_size, views = batch["context"]["image"].shape[:2]
        if context_features.ndim != 5 or context_features.shape[:2] != (batch_size, views):
            raise ValueError(
                f"`context_features` must have shape [{batch_size}, {views}, C, hc, wc], got "
                f"{list(context_features.shape)}."
            )
        upsample, splat, blend, resample = self.stages(batch)
        rendered = splat.apply(upsample.apply(context_features))
        tokens = resample.apply(blend.apply(rendered.features, rendered.alpha))
        coverage = token_coverage(rendered.alpha, resample.grid, self.coverage_threshold)
        return TeacherTargets(features=tokens, coverage=coverage, alpha=rendered.alpha)

    @torch.no_grad()
    def operator(self, batch: dict) -> TeacherOperator:
        """The linear map from the context views' tokens to this teacher's targets for ``batch``.

        Everything after the ViT is linear in the context tokens once the frozen lifter has placed
        the Gaussians: the same stages as :meth:`forward`, composed by their weights
        (:func:`~snd_hf.splatting.teacher.operator.compose_operator`).
        ``self.operator(batch).apply(context_features)`` equals ``self(context_features, batch)``
        (features within float rounding, identical coverage, torch backend), and can be reused for
        any features of the same views.

        Args:
            batch: a scene batch (``context`` and ``target`` views). [B, V, ...]

        Returns:
            :class:`~snd_hf.splatting.teacher.operator.TeacherOperator` for the batch.
        """
        return compose_operator(*self.stages(batch), self.coverage_threshold)

    def stages(self, batch: dict) -> tuple[Upsample, Splat, Blend, Resample]:
        """The teacher's stages for ``batch``, in order (see :mod:`~snd_hf.splatting.teacher.stages`).

        Runs the frozen lifter on the context views (the only step that is not linear in the
        features, and does not depend on them). The views' cameras become
        :class:`~snd_hf.cameras.Cameras` here (``Cameras.from_views``), for the lifter and the renderer alike.
        """
        context, target = batch["context"], batch["target"]
        views, _, height, width = context["image"].shape[1:]
        with torch.no_grad():
            gaussians = self.lifter(context["image"], Cameras.from_views(context), context.get("depth"))
        if gaussians.num_gaussians != views * height * width:
            raise ValueError(
                f"the lifter must return one Gaussian per context pixel ({views * height * width}), got "
                f"{gaussians.num_gaussians}."
            )
        target_size = tuple(target["image"].shape[-2:])
        grid = (height // self.patch_size, width // self.patch_size)
        target_grid = (target_size[0] // self.patch_size, target_size[1] // self.patch_size)
        return (
            Upsample(grid, (height, width), self.upsample, self._upsampling_masks(context)),
            Splat(gaussians, Cameras.from_views(target), self.backend),
            Blend(self.blending, target["mask"], self.weighted_blending),
            Resample(target_size, target_grid, self.resample),
        )

    def _upsampling_masks(self, context: dict) -> torch.Tensor | None:
        """Context masks at the image size for mask-aware upsampling, or None (plain or patch-aligned). [B·Vc, H, W]"""
        if self.upsample != "original" or not self.mask_aware:
            # Deviation (optional): plain bilinear is the paper's "no mask-aware upsampling" ablation.
            return None
        return resize_masks(context["mask"], context["image"].shape[-2:]).flatten(0, 1)
