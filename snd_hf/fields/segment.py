"""Using a fitted field: one-click 3D selection, highlight segmentation and editing.

- **Click selection.** The clicked pixel's rendered ``f_ind`` (view-independent features, divided
  by the pixel's alpha) is the query; every Gaussian whose own ``f_ind`` has cosine similarity
  at least ``threshold`` with it is selected: :data:`SIMILARITY` = 0.6 by default, chosen on
  development scenes (generator seed 100 and exact instance features), never on the evaluation
  scenes; ``threshold="otsu"`` takes Otsu's cut of the opacity-weighted similarities of all
  Gaussians instead (parameter-free, but it splits the scene into two groups, often "objects" and
  "room", so it over-selects when the scene has more than two kinds of things). The selection is
  a set of Gaussians, i.e. a 3D object; :func:`selection_masks` renders it into any view (a pixel
  is selected when at least half of its rendered opacity comes from selected Gaussians).
- **Highlight segmentation.** A pixel is a highlight when the rendered view-dependent features
  are strong relative to the view-independent ones, ``‖f_dep‖ / ‖f_ind‖ > threshold``.
- **Editing** returns an edited copy of the field: :func:`recolor` (diffuse colour of the
  selection, keeping its texture), :func:`scale_specular` (0 removes the reflections),
  :func:`set_roughness` (Ref-NeRF roughness of the view-dependent parts: blurs highlights).
  Nothing outside the selection changes, so pixels the selection does not reach render
  bit-identically.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from snd_hf.schema import finite_number

from .features import DEFAULT_SHORT_SIDE, as_feature_source, teacher_features, upsample
from .field import Component, FeatureField
from .scene import Cameras

COVERAGE = 0.5  # smallest rendered alpha of a clickable or selectable pixel
SIMILARITY = 0.6  # default cosine similarity to the query of a selected Gaussian
HIGHLIGHT_RATIO = 0.5  # default ‖f_dep‖ / ‖f_ind‖ above which a pixel is a highlight
# Edit bounds: beyond them a highlight is saturated white or its lobe is flat (exp(-l (l + 1) ρ / 2)
# of band 1 is below 1e-400 at ρ = 1000); larger values are typos, and inf/NaN would break the field.
MAX_SPECULAR_SCALE = 1000.0
MAX_ROUGHNESS = 1000.0


@dataclass
class Selection:
    """Gaussians chosen by similarity to a query feature.

    Attributes:
        mask: the selected Gaussians. [G]
        similarity: cosine similarity of every Gaussian's feature to the query. [G]
        threshold: the similarity cut that was used.
        query: the query feature. [k]
    """

    mask: torch.Tensor
    similarity: torch.Tensor
    threshold: float
    query: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def click_feature(
    field: FeatureField,
    view: int,
    pixel: tuple[int, int],
    cameras: Cameras | None = None,
    component: Component = "ind",
) -> torch.Tensor:
    """The rendered feature under a click.

    Args:
        field: a field with features.
        view: camera index in ``cameras`` (the field's training cameras when None).
        pixel: ``(x, y)`` = (column, row) in pixels of that camera's image.
        component: ``"ind"`` (default), ``"dep"`` or ``"full"``.

    Returns:
        the feature at the pixel, divided by its alpha. [k]

    Raises:
        ValueError: the view or pixel is outside the cameras/image, or the pixel is not covered.
    """
    cameras = _cameras(field, cameras)
    if not isinstance(view, int) or not 0 <= view < len(cameras):
        raise ValueError(f"view {view!r} is out of range: the field has {len(cameras)} views (0 to {len(cameras) - 1})")
    height, width = cameras.image_size
    x, y = pixel
    if not (isinstance(x, int) and isinstance(y, int) and 0 <= x < width and 0 <= y < height):
        raise ValueError(f"click {x},{y} is outside the {width}x{height} image of view {view} (x in [0, {width}), y in [0, {height}))")
    with torch.no_grad():
        out = field.render(cameras[view], color=False, features=True)
    alpha = float(out.alpha[0, 0, y, x])
    if alpha < COVERAGE:
        raise ValueError(
            f"click {x},{y} in view {view} is not covered by the field (alpha {alpha:.2f} < {COVERAGE}); click on the scene"
        )
    return out.features(component)[0, :, y, x] / alpha


def image_click_feature(field: FeatureField, image: torch.Tensor, pixel: tuple[int, int], feature_model) -> torch.Tensor:
    """The teacher's feature under a click on any picture (not necessarily a view of the field),
    in the field's feature space: a query to find that object in 3D.

    Args:
        image: RGB in [0, 1]. [3, H, W]
        pixel: ``(x, y)`` in pixels of ``image``.
        feature_model: the teacher the field was distilled from (a model spec, ``SnDModel``, ...).

    Returns:
        the projected teacher feature at the pixel. [k]

    Raises:
        ValueError: the feature model is not the field's, or the click is outside the image.
    """
    if field.feature_space is None:
        raise ValueError("this field has no features; distil them with fit_features before selecting.")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"`image` must have shape [3, H, W], got {list(image.shape)}.")
    height, width = image.shape[-2:]
    x, y = pixel
    if not (isinstance(x, int) and isinstance(y, int) and 0 <= x < width and 0 <= y < height):
        raise ValueError(f"click {x},{y} is outside the {width}x{height} image (x in [0, {width}), y in [0, {height}))")
    source = as_feature_source(feature_model, field.info.get("feature_fit", {}).get("short_side", DEFAULT_SHORT_SIDE))
    features = teacher_features(source, image[None], torch.zeros(1, dtype=torch.long))
    field.feature_space.check(source.name, source.identity, features.shape[1])
    return field.feature_space.project(upsample(features, (height, width)))[0, :, y, x]


def select_similar(field: FeatureField, query: torch.Tensor, threshold: float | str = SIMILARITY) -> Selection:
    """Select the Gaussians whose ``f_ind`` is similar to ``query`` [k] (see the module docstring)."""
    if field.feature_space is None:
        raise ValueError("this field has no features; distil them with fit_features before selecting.")
    if query.shape != (field.feature_dim,):
        raise ValueError(f"`query` must have shape [{field.feature_dim}], got {list(query.shape)}.")
    with torch.no_grad():
        similarity = F.cosine_similarity(field.features_ind, query.to(field.features_ind)[None], dim=-1)
        if threshold == "otsu":
            threshold = otsu_threshold(similarity, field.opacities)
        elif not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
            raise ValueError(f"`threshold` must be 'otsu' or a cosine similarity in [-1, 1], got {threshold!r}.")
    return Selection(mask=similarity >= threshold, similarity=similarity, threshold=float(threshold), query=query)


def select_by_click(
    field: FeatureField,
    view: int,
    pixel: tuple[int, int],
    threshold: float | str = SIMILARITY,
    cameras: Cameras | None = None,
) -> Selection:
    """One-click 3D selection: :func:`click_feature` (``f_ind``) then :func:`select_similar`."""
    return select_similar(field, click_feature(field, view, pixel, cameras, "ind"), threshold)


def selection_masks(field: FeatureField, selection: Selection, cameras: Cameras | None = None) -> torch.Tensor:
    """Render a selection into cameras. Returns the selected pixels. [V, H, W] bool"""
    _check_selection(field, selection)
    with torch.no_grad():
        out = field.render(_cameras(field, cameras), color=False, features=False, extra=selection.mask.float()[:, None])
    alpha = out.alpha[:, 0]
    return (alpha >= COVERAGE) & (out.extra[:, 0] >= 0.5 * alpha)


def highlight_masks(field: FeatureField, cameras: Cameras | None = None, threshold: float = HIGHLIGHT_RATIO) -> torch.Tensor:
    """Pixels where ``‖f_dep‖ / ‖f_ind‖ > threshold`` (covered pixels only). [V, H, W] bool"""
    if not field.disentangled:
        raise ValueError("this field is not disentangled (no f_dep); fit it with disentangled=True.")
    with torch.no_grad():
        out = field.render(_cameras(field, cameras), color=False, features=True)
    ratio = out.features_dep.norm(dim=1) / out.features_ind.norm(dim=1).clamp_min(1e-8)
    return (out.alpha[:, 0] >= COVERAGE) & (ratio > threshold)


def recolor(field: FeatureField, selection: Selection, color: tuple[float, float, float]) -> FeatureField:
    """Give the selection a new diffuse colour, keeping its texture: each Gaussian's luminance
    relative to the selection's mean luminance scales ``color`` (RGB in [0, 1])."""
    _check_selection(field, selection)
    edited = copy.deepcopy(field)
    with torch.no_grad():
        diffuse = edited.diffuse[selection.mask]
        luminance = diffuse @ diffuse.new_tensor([0.299, 0.587, 0.114])
        relative = luminance / luminance.mean().clamp_min(1e-6) if len(luminance) else luminance
        edited.diffuse[selection.mask] = relative[:, None] * diffuse.new_tensor(color)
    return edited


def scale_specular(field: FeatureField, selection: Selection, factor: float) -> FeatureField:
    """Multiply the selection's specular colour by ``factor`` in [0, ``MAX_SPECULAR_SCALE``] (0 removes
    its reflections). Raises SchemaError for a factor that is not finite or out of range."""
    finite_number("specular scale", factor, 0.0, MAX_SPECULAR_SCALE)
    _check_selection(field, selection)
    edited = copy.deepcopy(field)
    with torch.no_grad():
        edited.specular[selection.mask] *= factor
    return edited


def set_roughness(field: FeatureField, selection: Selection, roughness: float) -> FeatureField:
    """Set the Ref-NeRF roughness ``ρ`` in [0, ``MAX_ROUGHNESS``] of the selection's view-dependent parts
    (0 = as fitted). Raises SchemaError for a value that is not finite or out of range."""
    finite_number("roughness", roughness, 0.0, MAX_ROUGHNESS)
    _check_selection(field, selection)
    edited = copy.deepcopy(field)
    edited.roughness[selection.mask] = float(roughness)
    return edited


def otsu_threshold(values: torch.Tensor, weights: torch.Tensor | None = None, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising the weighted between-class variance of ``values`` [N]."""
    values = values.detach().double().flatten()
    weights = torch.ones_like(values) if weights is None else weights.detach().double().flatten()
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return high
    index = ((values - low) / (high - low) * (bins - 1)).round().long()
    histogram = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, weights)
    centres = torch.linspace(low, high, bins, dtype=torch.float64)
    below = torch.cumsum(histogram, 0)
    moment = torch.cumsum(histogram * centres, 0)
    total, total_moment = below[-1], moment[-1]
    above = total - below
    between = (total_moment * below / total - moment) ** 2 / (below * above).clamp_min(1e-30) * total
    between[(below <= 0) | (above <= 0)] = -1.0
    cut = int(between.argmax())
    return float(0.5 * (centres[cut] + centres[min(cut + 1, bins - 1)]))


def _cameras(field: FeatureField, cameras: Cameras | None) -> Cameras:
    if cameras is not None:
        return cameras
    if field.cameras is None:
        raise ValueError("`cameras` is required: this field stores no training cameras.")
    return field.cameras


def _check_selection(field: FeatureField, selection: Selection) -> None:
    if selection.mask.shape != (field.num_gaussians,):
        raise ValueError(
            f"the selection covers {selection.mask.shape[0]} Gaussians but the field has {field.num_gaussians}; "
            "select on this field"
        )
