"""The SnD teacher as a sparse linear operator: context-view tokens → target-view token targets.

With a frozen lifter, every stage of :mod:`~snd_hf.splatting.teacher.stages` is linear in the
context tokens, with weights fixed by the depth (or MVSplat's Gaussians), the poses and the
masks. :func:`compose_operator` multiplies the stages' ``weights`` into one map per sample,
``[Vt·h·w, Vc·hc·wc]`` (resample ∘ render ∘ upsample; no feature is ever rendered), applied to any
features of the same views with one matrix product (a small map is held dense and applied with
one batched product, much faster than a sparse product at the tiny recipe's 6x8 tokens).

Blending stays a factor of its own in a sparse map, applied with it: ``a · W f + (1 − a) · spread @ (means @ f)``
with ``means`` ``[S, Vc·hc·wc]`` each target segment's mean as a map of the context tokens and
``spread`` ``[h·w, S]`` each token's share of the segments its pixels belong to. Multiplied out,
every token of a segment would depend on every context token the segment sees, a much denser map.
A map held dense costs the same whatever its entries, so there the blend is multiplied in.

The trainer caches the operator's rows per target view (:mod:`~snd_hf.splatting.teacher.cache`),
which removes the lifter, the renderer and the mask operations from every later step. Coverage is
computed from the renderer's own alpha, so it is identical to the direct path's.

Shapes: B batch, Vc/Vt context/target views, C channels, (hc, wc) context and (h, w) target token
grids, (H, W) image sizes, S segments.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .stages import Blend, Resample, Splat, Upsample, token_coverage

# Maps whose rows for one target view have at most this many entries (256 KB in float32) are held
# dense: a batched dense product beats the sparse one at small token grids, and beyond them only
# the sparse map fits in memory. Per target view, so that the layout does not depend on how many
# targets a sample carries (the operator cache mixes views of different builds).
DENSE_MAX_ENTRIES = 1 << 16


@dataclass
class SegmentBlend:
    """The blending stage of a :class:`TeacherOperator`, kept factored: ``a · W f + (1 − a) · spread @ (means @ f)``.

    Attributes:
        coefficient: ``a``, weight of a pixel's own features.
        means: ``means[b][v]``, ``[S, Vc·hc·wc]`` sparse float32: the segment means of sample b's
            target view v's rendered features, as maps of the context tokens (S segments of that view).
        spread: ``spread[b][v]``, ``[h·w, S]`` sparse float32: each token's resampled share of its
            pixels' segments.
    """

    coefficient: float
    means: list[list[torch.Tensor]]
    spread: list[list[torch.Tensor]]

    def nbytes(self) -> int:
        return sum(_stored_bytes(m) for sample in (*self.means, *self.spread) for m in sample)

    def apply(self, targets: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Blended targets ``[B·Vt·h·w, C]`` from the unblended ones and the context tokens ``[B·Vc·hc·wc, C]``."""
        columns = self.means[0][0].shape[1]
        means = [(m, b * columns) for b, sample in enumerate(self.means) for m in sample]
        segment_means = torch.sparse.mm(_place(means, tokens.dtype, by_rows=True), tokens)  # [ΣS, C]
        tokens_per_view = self.spread[0][0].shape[0]
        spread = [(m, v * tokens_per_view) for v, m in enumerate(m for sample in self.spread for m in sample)]
        return torch.lerp(torch.sparse.mm(_place(spread, tokens.dtype, by_rows=False), segment_means), targets, self.coefficient)


@dataclass
class TeacherOperator:
    """Per-sample linear maps (sparse, or dense when small) from context tokens to target tokens, and the targets' coverage.

    Attributes:
        weights: per sample, a ``[Vt·h·w, Vc·hc·wc]`` float32 matrix (resample ∘ render ∘ upsample),
            coalesced sparse COO or, with at most :data:`DENSE_MAX_ENTRIES` entries per target view,
            dense (all samples alike, as the grids decide); rows are target tokens ``(v, i, j)`` and
            columns context tokens, both row-major.
        coverage: tokens the Gaussians cover (area-averaged alpha >= threshold). [B, Vt, h, w]
        context_grid: ``(hc, wc)`` the operator expects.
        blend: the blending stage, or None without blending.
    """

    weights: list[torch.Tensor]
    coverage: torch.Tensor
    context_grid: tuple[int, int]
    blend: SegmentBlend | None = None

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
        columns = self.weights[0].shape[1]
        tokens = context_features.permute(0, 1, 3, 4, 2).reshape(batch * columns, channels)  # [B·Vc·hc·wc, C]
        if not self.weights[0].is_sparse:
            targets = torch.bmm(torch.stack(self.weights).to(tokens.dtype), tokens.view(batch, columns, channels))
            targets = targets.view(-1, channels)
        else:
            targets = torch.sparse.mm(_block_diagonal(self.weights, tokens.dtype), tokens)  # [B·Vt·h·w, C]
        if self.blend is not None:
            targets = self.blend.apply(targets, tokens)
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
                part = _block(weights, (v * rows, 0), (rows, weights.shape[1]))
            else:
                part = weights[v * rows : (v + 1) * rows].clone()  # a copy: a cached view must not hold the others
            blend = None
            if self.blend is not None:
                blend = SegmentBlend(self.blend.coefficient, [[self.blend.means[0][v]]], [[self.blend.spread[0][v]]])
            parts.append(TeacherOperator([part], self.coverage[:, v : v + 1].clone(), self.context_grid, blend))
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
        rows = weights[0].shape[0]
        stacked = _stack_blocks(weights, (rows, 0)) if weights[0].is_sparse else torch.cat(weights)
        blend = None
        if parts[0].blend is not None:
            means = [part.blend.means[0][0] for part in parts]
            blend = SegmentBlend(parts[0].blend.coefficient, [means], [[part.blend.spread[0][0] for part in parts]])
        return cls([stacked], torch.cat([part.coverage for part in parts], dim=1), parts[0].context_grid, blend)

    @classmethod
    def cat(cls, operators: list[TeacherOperator]) -> TeacherOperator:
        """Concatenate operators along the batch (same grids and view counts)."""
        if not operators:
            raise ValueError("`operators` must be a non-empty list.")
        grids = {(op.context_grid, tuple(op.coverage.shape[1:]), tuple(op.weights[0].shape)) for op in operators}
        if len(grids) != 1:
            raise ValueError(f"operators of different grids or views cannot be concatenated: {sorted(grids)}.")
        blend = None
        if operators[0].blend is not None:
            means = [sample for op in operators for sample in op.blend.means]
            blend = SegmentBlend(operators[0].blend.coefficient, means, [sample for op in operators for sample in op.blend.spread])
        return cls(
            [w for op in operators for w in op.weights],
            torch.cat([op.coverage for op in operators]),
            operators[0].context_grid,
            blend,
        )

    def nbytes(self) -> int:
        """Memory held by the operator (its maps, sparse or dense, the blend's and the coverage), in bytes."""
        stored = sum(_stored_bytes(w) for w in self.weights)
        return stored + (0 if self.blend is None else self.blend.nbytes()) + self.coverage.nbytes


def compose_operator(
    upsample: Upsample,
    splat: Splat,
    blend: Blend,
    resample: Resample,
    coverage_threshold: float,
) -> TeacherOperator:
    """Multiply the stages' weights into one map per sample (blending kept as a factor).

    Use :meth:`SplatTeacher.operator <snd_hf.splatting.teacher.SplatTeacher.operator>`, which builds
    the stages from its settings and the batch, exactly as its forward does.

    Returns:
        :class:`TeacherOperator` with one ``[Vt·h·w, Vc·hc·wc]`` map per sample (dense up to
        :data:`DENSE_MAX_ENTRIES` entries per target view).
    """
    gaussians = splat.gaussians
    batch, device = gaussians.means.shape[0], gaussians.means.device
    height, width = upsample.size
    pixels = height * width
    context_views = gaussians.num_gaussians // pixels
    hc, wc = upsample.grid
    grid = resample.grid

    # Upsampling: context pixel q of view v ← tokens neighbour[:, q] (+ v·hc·wc) with weights.
    neighbour, up_weights = upsample.weights(device)
    taps = neighbour.shape[0]
    neighbour = neighbour.reshape(taps, pixels)  # [K, H·W]
    up_weights = up_weights.expand(batch * context_views, -1, -1, -1).reshape(batch, context_views, taps, pixels)
    up_weights = up_weights.transpose(2, 3).double()  # [B, Vc, H·W, K]
    renders = splat.weights()  # (target pixel, Gaussian, αT) per target view
    pool = resample.weights(device)  # [h·w, H·W]

    operators, means, spreads, alphas = [], [], [], []
    # torch multiplies COO matrices through CSR internally, which warns that CSR support is in beta.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        for b in range(batch):
            rows, segment_means, segment_spreads = [], [], []
            for v, render in enumerate(renders[b]):
                counted = render.weight > 0  # most pairs of a splat's extent box are skipped (αT = 0)
                pixel, gaussian, weight = render.pixel[counted], render.gaussian[counted], render.weight[counted]
                view, source = gaussian.div(pixels, rounding_mode="floor"), gaussian.remainder(pixels)
                # Render ∘ upsample: target pixel ← context token, weight αT · upsampling weight, K entries per pair.
                tokens = neighbour[:, source] + view * (hc * wc)  # [K, M]
                values = weight.double() * up_weights[b, view, source].T  # [K, M]
                rendered = _sparse(pixel.expand(taps, -1), tokens, values, (resample.size[0] * resample.size[1], context_views * hc * wc))
                rows.append(torch.sparse.mm(pool, rendered).coalesce())  # resample
                if blend.coefficient != 1.0:
                    segment_mean, membership = blend.weights(b, v, render.alpha)
                    segment_means.append(torch.sparse.mm(segment_mean, rendered))
                    segment_spreads.append(torch.sparse.mm(pool, membership))
                alphas.append(render.alpha)
            dense = grid[0] * grid[1] * context_views * hc * wc <= DENSE_MAX_ENTRIES  # one view's rows
            if dense and segment_means:
                # A dense map costs the same whatever blending adds to it: the blend is multiplied in.
                views = zip(rows, segment_spreads, segment_means)
                blended = [torch.lerp(spread.to_dense() @ mean.to_dense(), row.to_dense(), blend.coefficient) for row, spread, mean in views]
                operators.append(torch.cat(blended).float())
            else:
                operator = _stack_blocks(rows, (grid[0] * grid[1], 0))
                operators.append(operator.to_dense() if dense else operator)
                if segment_means:
                    means.append([_float(mean) for mean in segment_means])
                    spreads.append([_float(spread) for spread in segment_spreads])
    coverage = token_coverage(torch.stack(alphas).unflatten(0, (batch, -1)), grid, coverage_threshold)
    segment_blend = SegmentBlend(blend.coefficient, means, spreads) if means else None
    return TeacherOperator(operators, coverage, (hc, wc), segment_blend)


def _sparse(rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A coalesced sparse COO matrix from (row, column, value) triples of any shape (duplicates summed)."""
    indices = torch.stack([rows.reshape(-1), columns.reshape(-1)])
    return torch.sparse_coo_tensor(indices, values.reshape(-1), size, check_invariants=False).coalesce()


def _float(matrix: torch.Tensor) -> torch.Tensor:
    """A coalesced float32 copy of a sparse matrix."""
    matrix = matrix.coalesce()
    return torch.sparse_coo_tensor(matrix.indices(), matrix.values().float(), matrix.shape, is_coalesced=True, check_invariants=False)


def _place(blocks: list[tuple[torch.Tensor, int]], dtype: torch.dtype, *, by_rows: bool) -> torch.Tensor:
    """Coalesced sparse blocks in one matrix: stacked along rows (each at its column offset) or along columns (each at its row offset)."""
    stacked, placed = 0 if by_rows else 1, 1 if by_rows else 0
    indices, sizes = [], []
    for block, offset in blocks:
        shift = [0, 0]
        shift[stacked], shift[placed] = sum(sizes), offset
        indices.append(block.indices() + block.indices().new_tensor(shift)[:, None])
        sizes.append(block.shape[stacked])
    size = [0, 0]
    size[stacked] = sum(sizes)
    size[placed] = max(offset + block.shape[placed] for block, offset in blocks)
    values = torch.cat([block.values() for block, _ in blocks]).to(dtype)
    return torch.sparse_coo_tensor(torch.cat(indices, dim=1), values, size, is_coalesced=True, check_invariants=False)


def _stack_blocks(blocks: list[torch.Tensor], step: tuple[int, int]) -> torch.Tensor:
    """Coalesced sparse blocks placed along a diagonal (block v at ``v · step``) in one float32 matrix."""
    offsets = [blocks[0].indices().new_tensor([[v * step[0]], [v * step[1]]]) for v in range(len(blocks))]
    indices = torch.cat([block.indices() + offset for block, offset in zip(blocks, offsets)], dim=1)
    values = torch.cat([block.values() for block in blocks]).float()
    rows, columns = blocks[0].shape
    size = (step[0] * (len(blocks) - 1) + rows, step[1] * (len(blocks) - 1) + columns)
    return torch.sparse_coo_tensor(indices, values, size, is_coalesced=True, check_invariants=False)


def _block(matrix: torch.Tensor, start: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The ``size`` block of a coalesced sparse matrix whose rows start at ``start[0]``, its indices shifted by ``start``."""
    indices, values = matrix.indices(), matrix.values()
    keep = (indices[0] >= start[0]) & (indices[0] < start[0] + size[0])
    shifted = indices[:, keep] - indices.new_tensor([[start[0]], [start[1]]])
    return torch.sparse_coo_tensor(shifted, values[keep], size, is_coalesced=True, check_invariants=False)


def _block_diagonal(matrices: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """One block-diagonal sparse matrix of the samples' coalesced sparse maps, so that the batch is one product."""
    return _stack_blocks(matrices, tuple(matrices[0].shape)).to(dtype)


def _stored_bytes(matrix: torch.Tensor) -> int:
    return matrix.indices().nbytes + matrix.values().nbytes if matrix.is_sparse else matrix.nbytes
