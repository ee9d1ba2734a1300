"""The SnD teacher as a sparse linear operator: context-view tokens → target-view token targets.

With a frozen lifter, every step :class:`~snd_hf.splatting.teacher.SplatTeacher` takes after the
ViT is linear in the context tokens, with weights fixed by the depth (or MVSplat's Gaussians),
the poses and the masks:

1. upsampling: each context pixel is a weighted sum of at most four tokens
   (:func:`~snd_hf.splatting.upsampling.upsampling_weights`);
2. lifting + rendering: each target pixel is ``Σ αᵢ Tᵢ fᵢ`` over its (pixel, Gaussian) pairs
   (:func:`~snd_hf.splatting.render.compositing_weights`), one Gaussian per context pixel;
3. blending: ``a f + (1 - a) mean_segment(f)``, the segment means weighted by the rendered alpha;
4. resampling to the student's grid: a separable area (or bilinear) average.

Composed, they are one sparse matrix per sample, ``[Vt·h·w, Vc·hc·wc]``, built here directly
from those weights (no feature is ever rendered), and applied to any features of the same
views with one sparse matrix product (a small map is held dense and applied with one batched
product, much faster than a sparse product at the tiny recipe's 6x8 tokens). The trainer caches its rows per target view, which removes the lifter, the renderer and
the mask operations from every later step (see ``benchmarks/bench_train.py``). Coverage is computed from the renderer's own alpha, so it is
identical to the direct path's.

Shapes: B batch, Vc/Vt context/target views, C channels, (hc, wc) context and (h, w) target
token grids, (H, W) image sizes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .gaussians import Gaussians
from .masks import _segment_ids, resize_masks
from .render import compositing_weights
from .upsampling import Upsampling, upsampling_weights

# Maps whose rows for one target view have at most this many entries (256 KB in float32) are held
# dense: a batched dense product beats the sparse one at small token grids, and beyond them only
# the sparse map fits in memory. Per target view, so that the layout does not depend on how many
# targets a sample carries (the operator cache mixes views of different builds).
DENSE_MAX_ENTRIES = 1 << 16


@dataclass
class TeacherOperator:
    """Per-sample linear maps (sparse, or dense when small) from context tokens to target tokens, and the targets' coverage.

    Attributes:
        weights: per sample, a ``[Vt·h·w, Vc·hc·wc]`` float32 matrix, coalesced sparse COO or,
            with at most :data:`DENSE_MAX_ENTRIES` entries per target view, dense (all samples
            alike, as the grids decide); rows are target tokens ``(v, i, j)`` and columns context
            tokens, both row-major.
        coverage: tokens the Gaussians cover (area-averaged alpha >= threshold). [B, Vt, h, w]
        context_grid: ``(hc, wc)`` the operator expects.
    """

    weights: list[torch.Tensor]
    coverage: torch.Tensor
    context_grid: tuple[int, int]

    def __len__(self) -> int:
        return len(self.weights)

    def apply(self, context_features: torch.Tensor) -> torch.Tensor:
        """The teacher's target features from the context views' patch features.

        Args:
            context_features: patch features of the context views. [B, Vc, C, hc, wc]

        Returns:
            target features per student token. [B, Vt, C, h, w]
        """
        batch, target_views, height, width = self.coverage.shape
        if context_features.ndim != 5 or context_features.shape[0] != batch or tuple(context_features.shape[-2:]) != self.context_grid:
            raise ValueError(
                f"`context_features` must have shape [{batch}, Vc, C, {self.context_grid[0]}, {self.context_grid[1]}], "
                f"got {list(context_features.shape)}."
            )
        channels = context_features.shape[2]
        rows, columns = self.weights[0].shape
        tokens = context_features.permute(0, 1, 3, 4, 2).reshape(batch * columns, channels)  # [B·Vc·hc·wc, C]
        if not self.weights[0].is_sparse:
            targets = torch.bmm(torch.stack(self.weights).to(tokens.dtype), tokens.view(batch, columns, channels))
            return targets.view(batch, target_views, height, width, channels).permute(0, 1, 4, 2, 3)
        # One block-diagonal product for the whole batch.
        indices = torch.cat(
            [w.indices() + w.indices().new_tensor([[b * rows], [b * columns]]) for b, w in enumerate(self.weights)], dim=1
        )
        values = torch.cat([w.values() for w in self.weights])
        block = torch.sparse_coo_tensor(
            indices, values.to(tokens.dtype), (batch * rows, batch * columns), is_coalesced=True, check_invariants=False
        )
        targets = torch.sparse.mm(block, tokens)  # [B·Vt·h·w, C]
        return targets.view(batch, target_views, height, width, channels).permute(0, 1, 4, 2, 3)

    def split_views(self) -> list[TeacherOperator]:
        """One operator per target view of a one-sample operator (for caching view by view)."""
        if len(self) != 1:
            raise ValueError(f"split_views needs an operator of one sample, got {len(self)}.")
        (weights,), views = self.weights, self.coverage.shape[1]
        rows = weights.shape[0] // views
        parts = []
        for v in range(views):
            if weights.is_sparse:
                indices, values = weights.indices(), weights.values()
                keep = (indices[0] >= v * rows) & (indices[0] < (v + 1) * rows)
                shifted = indices[:, keep] - indices.new_tensor([[v * rows], [0]])
                part = torch.sparse_coo_tensor(
                    shifted, values[keep], (rows, weights.shape[1]), is_coalesced=True, check_invariants=False
                )
            else:
                part = weights[v * rows : (v + 1) * rows].clone()  # a copy: a cached view must not hold the others
            parts.append(TeacherOperator([part], self.coverage[:, v : v + 1].clone(), self.context_grid))
        return parts

    @classmethod
    def stack_views(cls, parts: list[TeacherOperator]) -> TeacherOperator:
        """One sample's operator from operators of its target views (one sample and one view each, same context views), in view order."""
        if not parts or any(len(part) != 1 or part.coverage.shape[1] != 1 for part in parts):
            raise ValueError("stack_views needs a non-empty list of operators of one sample and one target view each.")
        shapes = {(part.context_grid, tuple(part.coverage.shape[2:]), tuple(part.weights[0].shape)) for part in parts}
        if len(shapes) != 1:
            raise ValueError(f"operators of different grids cannot be stacked: {sorted(shapes)}.")
        weights = [w for part in parts for w in part.weights]
        if weights[0].is_sparse:
            stacked = _stack_rows(weights, weights[0].shape[0])
        else:
            stacked = torch.cat(weights)
        return cls([stacked], torch.cat([part.coverage for part in parts], dim=1), parts[0].context_grid)

    @classmethod
    def cat(cls, operators: list[TeacherOperator]) -> TeacherOperator:
        """Concatenate operators along the batch (same grids and view counts)."""
        if not operators:
            raise ValueError("`operators` must be a non-empty list.")
        grids = {(op.context_grid, tuple(op.coverage.shape[1:]), tuple(op.weights[0].shape)) for op in operators}
        if len(grids) != 1:
            raise ValueError(f"operators of different grids or views cannot be concatenated: {sorted(grids)}.")
        return cls(
            [w for op in operators for w in op.weights],
            torch.cat([op.coverage for op in operators]),
            operators[0].context_grid,
        )

    def nbytes(self) -> int:
        """Memory held by the operator (its maps, sparse or dense, and the coverage), in bytes."""
        stored = sum(w.indices().nbytes + w.values().nbytes if w.is_sparse else w.nbytes for w in self.weights)
        return stored + self.coverage.nbytes


def build_teacher_operator(
    gaussians: Gaussians,
    target: dict[str, torch.Tensor],
    *,
    context_grid: tuple[int, int],
    context_size: tuple[int, int],
    upsample: Upsampling = "original",
    upsampling_masks: torch.Tensor | None = None,
    blending: float = 0.5,
    weighted_blending: bool = True,
    resample: Literal["area", "bilinear"] = "area",
    coverage_threshold: float = 0.5,
    patch_size: int = 14,
    eps2d: float = 0.3,
    max_pairs: int = 1 << 21,
) -> TeacherOperator:
    """Compose upsampling, rendering, blending and resampling into one sparse map per sample.

    Use :meth:`SplatTeacher.operator <snd_hf.splatting.teacher.SplatTeacher.operator>`, which passes
    its own settings; the arguments mirror :class:`~snd_hf.splatting.teacher.SplatTeacher`'s.

    Args:
        gaussians: the lifter's Gaussians, one per context pixel, ordered ``b (v h w)``. [B, G, ...]
        target: the target views of the batch (``image``, ``extrinsics``, ``intrinsics``, ``near``,
            ``far``, ``mask``). [B, Vt, ...]
        context_grid: ``(hc, wc)`` token grid of the context features.
        context_size: ``(H, W)`` of the context images (one Gaussian per pixel).
        upsampling_masks: context masks at ``context_size`` for mask-aware upsampling, or None. [B·Vc, H, W]

    Returns:
        :class:`TeacherOperator` with one ``[Vt·h·w, Vc·hc·wc]`` map per sample (dense up to
        :data:`DENSE_MAX_ENTRIES` entries per target view).
    """
    batch = gaussians.means.shape[0]
    height, width = context_size
    pixels = height * width
    if gaussians.num_gaussians % pixels:
        raise ValueError(
            f"the lifter must return one Gaussian per context pixel (a multiple of {height}x{width}), got "
            f"{gaussians.num_gaussians}."
        )
    context_views = gaussians.num_gaussians // pixels
    hc, wc = context_grid
    target_height, target_width = target["image"].shape[-2:]
    grid = (target_height // patch_size, target_width // patch_size)

    # 1. Upsampling: context pixel q of view v ← tokens neighbour[:, q] (+ v·hc·wc) with weights.
    neighbour, up_weights = upsampling_weights(
        context_grid, context_size, mode=upsample, masks=upsampling_masks, device=gaussians.means.device
    )
    taps = neighbour.shape[0]
    neighbour = neighbour.reshape(taps, pixels)  # [K, H·W]
    up_weights = up_weights.expand(batch * context_views, -1, -1, -1).reshape(batch, context_views, taps, pixels)
    up_weights = up_weights.transpose(2, 3).double()  # [B, Vc, H·W, K]

    # 2. Rendering weights: (target pixel, Gaussian, αT) per target view.
    renders = compositing_weights(
        gaussians,
        target["extrinsics"],
        target["intrinsics"],
        target["near"],
        target["far"],
        (target_height, target_width),
        eps2d=eps2d,
        max_pairs=max_pairs,
    )
    # 4. Resampling to the student's grid: separable, the product of two 1-D maps.
    pool = _resampling_matrix((target_height, target_width), grid, resample, gaussians.means.device)  # [h·w, H·W]
    masks = resize_masks(target["mask"], (target_height, target_width))

    operators, alphas = [], []
    # torch multiplies COO matrices through CSR internally, which warns that CSR support is in beta.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        for b in range(batch):
            rows = []
            for v, render in enumerate(renders[b]):
                counted = render.weight > 0  # most pairs of a splat's extent box are skipped (αT = 0)
                pixel, gaussian, weight = render.pixel[counted], render.gaussian[counted], render.weight[counted]
                view, source = gaussian.div(pixels, rounding_mode="floor"), gaussian.remainder(pixels)
                # Target pixel ← context token, weight αT · upsampling weight: K entries per pair.
                tokens = neighbour[:, source] + view * (hc * wc)  # [K, M]
                values = weight.double() * up_weights[b, view, source].T  # [K, M]
                rendered = _sparse(pixel.expand(taps, -1), tokens, values, (target_height * target_width, context_views * hc * wc))
                # 3. Blending within the target's segments, then 4. resampling.
                mixed = torch.sparse.mm(pool, rendered)
                if blending != 1.0:
                    means, membership = _blend_rows(masks[b, v].flatten(), render.alpha.flatten() if weighted_blending else None)
                    mixed = blending * mixed + (1.0 - blending) * torch.sparse.mm(
                        torch.sparse.mm(pool, membership), torch.sparse.mm(means, rendered)
                    )
                rows.append(mixed.coalesce())
                alphas.append(render.alpha)
            operator = _stack_rows(rows, grid[0] * grid[1])
            dense = grid[0] * grid[1] * context_views * hc * wc <= DENSE_MAX_ENTRIES  # one view's rows
            operators.append(operator.to_dense() if dense else operator)
    # 5. Coverage from the renderer's own alpha, exactly as SplatTeacher computes it.
    alpha = torch.stack(alphas).view(batch * len(renders[0]), 1, target_height, target_width)
    token_alpha = F.interpolate(alpha, size=grid, mode="area").view(batch, len(renders[0]), *grid)
    return TeacherOperator(operators, token_alpha >= coverage_threshold, (hc, wc))


def _sparse(rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A coalesced sparse COO matrix from (row, column, value) triples of any shape (duplicates summed)."""
    indices = torch.stack([rows.reshape(-1), columns.reshape(-1)])
    return torch.sparse_coo_tensor(indices, values.reshape(-1), size, check_invariants=False).coalesce()


def _blend_rows(segments: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The segment-mean map of :func:`~snd_hf.splatting.masks.blend_with_mask` for one view.

    Args:
        segments: instance ids per pixel. [P]
        weights: per-pixel weights of the means (the rendered alpha), or None for plain means. [P]

    Returns:
        means: ``[S, P]`` sparse, row s averages segment s's pixels (weighted where its weights
        sum above 0, plain otherwise, as blend_with_mask does); membership: ``[P, S]`` sparse,
        each pixel's segment.
    """
    segment, count = _segment_ids(segments[None])
    segment = segment[0]
    pixels = torch.arange(segment.numel(), device=segment.device)
    area = torch.zeros(count, dtype=torch.float64, device=segment.device).index_add_(0, segment, torch.ones_like(segment, dtype=torch.float64))
    share = 1.0 / area.clamp_min(1.0)[segment]
    if weights is not None:
        weights = weights.double()
        mass = torch.zeros(count, dtype=torch.float64, device=segment.device).index_add_(0, segment, weights)
        share = torch.where(mass[segment] > 0, weights / mass.clamp_min(1e-12)[segment], share)
    means = _sparse(segment, pixels, share, (count, segment.numel()))
    membership = _sparse(pixels, segment, torch.ones_like(share), (segment.numel(), count))
    return means, membership


def _resampling_matrix(
    size: tuple[int, int], grid: tuple[int, int], mode: Literal["area", "bilinear"], device: torch.device
) -> torch.Tensor:
    """``[h·w, H·W]`` sparse map of ``F.interpolate(mode=mode)`` from ``size`` to ``grid``.

    Both modes are separable; each axis's 1-D weights are read off torch's own interpolation of
    an identity (so they match the direct path's ``F.interpolate``).
    """

    def axis(length: int, target: int) -> torch.Tensor:  # [target, length]
        identity = torch.eye(length, dtype=torch.float64, device=device)[:, None, :]
        if mode == "area":
            return F.interpolate(identity, size=target, mode="area")[:, 0, :].T
        return F.interpolate(identity, size=target, mode="linear", align_corners=False)[:, 0, :].T

    rows, columns = axis(size[0], grid[0]), axis(size[1], grid[1])
    row_index, row_pixel = rows.nonzero(as_tuple=True)
    column_index, column_pixel = columns.nonzero(as_tuple=True)
    token = row_index[:, None] * grid[1] + column_index[None, :]
    pixel = row_pixel[:, None] * size[1] + column_pixel[None, :]
    values = rows[row_index, row_pixel][:, None] * columns[column_index, column_pixel][None, :]
    return _sparse(token, pixel, values, (grid[0] * grid[1], size[0] * size[1]))


def _stack_rows(rows: list[torch.Tensor], tokens_per_view: int) -> torch.Tensor:
    """Stack per-view ``[h·w, N]`` sparse maps into one ``[Vt·h·w, N]`` float32 map."""
    indices = torch.cat([r.indices() + r.indices().new_tensor([[v * tokens_per_view], [0]]) for v, r in enumerate(rows)], dim=1)
    values = torch.cat([r.values() for r in rows]).float()
    size = (len(rows) * tokens_per_view, rows[0].shape[1])
    return torch.sparse_coo_tensor(indices, values, size, is_coalesced=True, check_invariants=False)
