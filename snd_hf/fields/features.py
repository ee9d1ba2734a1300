"""2D teacher features for a feature field: any SnDModel checkpoint, a feature tensor or a callable.

A feature source maps the images of some views of a scene to dense features::

    source(images [V, 3, H, W] in [0, 1], views [V] positions in the scene) -> [V, C, h, w]

at any resolution ``h x w``; the fitting upsamples them to pixels (bilinear). Every source has a
``name`` and an ``identity`` fingerprint, which a fitted field keeps (:class:`FeatureSpace`) so
that features of another model are refused instead of silently compared.

- :class:`ModelFeatures`: an ``SnDModel`` (a checkpoint folder, Hub id, original ``.pth`` or an
  in-memory model): last-layer patch features after the final norm of the images resized so that
  their short side is ``short_side`` pixels (each side a multiple of the patch size);
  fingerprint = SHA-256 of the architecture and weights (:func:`snd_hf.loading.weights_hash`).
- :class:`TensorFeatures`: one precomputed map per scene view (tests, exact synthetic features).
- :class:`CallableFeatures`: any function of ``(images, views)``; fingerprint = its name.
- :class:`WithColour`: another source's features with the pixels' colour appended (a benchmark
  teacher whose features see specular highlights, which add white light to the colour).

:func:`fit_feature_space` fits the PCA that maps the C teacher channels to the field's k.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from snd_hf.eval.features import FeatureModel, extract_features, load_feature_model
from snd_hf.loading import weights_hash
from snd_hf.modeling_snd import SnDModel

from .field import FeatureSpace

DEFAULT_SHORT_SIDE = 224  # model input short side for feature extraction, pixels


class FeatureSource(Protocol):
    """What the fitting needs from a 2D teacher (see the module docstring)."""

    name: str
    identity: str

    def __call__(self, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor: ...


@dataclass
class ModelFeatures:
    """Patch features of an SnD/DINOv2 model.

    Args:
        feature_model: the model with its fingerprint (see :func:`snd_hf.eval.features.load_feature_model`).
        short_side: model input short side in pixels; each side is rounded to a multiple of the patch size.
        batch_size: images per forward pass.
    """

    feature_model: FeatureModel
    short_side: int = DEFAULT_SHORT_SIDE
    batch_size: int = 8

    @property
    def name(self) -> str:
        return self.feature_model.name

    @property
    def identity(self) -> str:
        return self.feature_model.weights_hash

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Model input ``(H', W')`` for ``height x width`` images: short side ``short_side``, multiples of the patch."""
        patch = self.feature_model.model.config.patch_size
        scale = self.short_side / min(height, width)
        return tuple(max(patch, round(size * scale / patch) * patch) for size in (height, width))

    def __call__(self, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Patch features ``[V, C, H' / 14, W' / 14]`` of images ``[V, 3, H, W]``."""
        size = self.input_size(*images.shape[-2:])
        return extract_features(self.feature_model, images, size, self.batch_size, description=f"features of {self.name}").patch


@dataclass
class TensorFeatures:
    """Precomputed features, one map per view of the scene they belong to.

    Args:
        features: one map per scene view, in the scene's order. [N, C, h, w]
        name: label stored in the field.
    """

    features: torch.Tensor
    name: str = "tensor"

    def __post_init__(self) -> None:
        if self.features.ndim != 4:
            raise ValueError(f"`features` must have shape [N, C, h, w], got {list(self.features.shape)}.")

    @property
    def identity(self) -> str:
        return hashlib.sha256(self.features.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()

    def __call__(self, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        if views.numel() and int(views.max()) >= self.features.shape[0]:
            raise ValueError(
                f"the feature tensor holds {self.features.shape[0]} views but view {int(views.max())} was asked for; "
                "give one map per scene view"
            )
        return self.features[views.to(self.features.device)]


@dataclass
class CallableFeatures:
    """Features from ``function(images [V, 3, H, W], views [V]) -> [V, C, h, w]``; ``name`` is its fingerprint."""

    function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    name: str = "callable"

    @property
    def identity(self) -> str:
        return hashlib.sha256(f"callable:{self.name}".encode()).hexdigest()

    def __call__(self, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return self.function(images, views)


@dataclass
class WithColour:
    """``source``'s features, upsampled to pixels, with ``weight`` x the pixel's RGB appended.

    A teacher that sees highlights: a specular highlight adds white light, so these features
    change with the view where the colour does, whatever ``source`` does. ``weight`` scales the
    colour channels against the source's (the PCA of the field keeps the channels of largest
    variance). [V, C + 3, H, W]
    """

    source: FeatureSource
    weight: float = 8.0

    @property
    def name(self) -> str:
        return f"{self.source.name}+colour"

    @property
    def identity(self) -> str:
        return hashlib.sha256(f"{self.source.identity}+colour:{self.weight}".encode()).hexdigest()

    def __call__(self, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        features = upsample(teacher_features(self.source, images, views), tuple(images.shape[-2:]))
        return torch.cat([features, self.weight * images.to(features)], dim=1)


def as_feature_source(source, short_side: int = DEFAULT_SHORT_SIDE) -> FeatureSource:
    """Wrap what a user passes as the feature model.

    Args:
        source: a model spec (``PATH`` or ``NAME=PATH``: checkpoint folder, Hub id, original ``.pth``),
            an ``SnDModel``, a :class:`~snd_hf.eval.features.FeatureModel`, a feature tensor
            [N, C, h, w] (one map per scene view), a callable ``(images, views) -> features``, or
            an object that already is a :class:`FeatureSource`.
        short_side: model input short side (models only).
    """
    if isinstance(source, (ModelFeatures, TensorFeatures, CallableFeatures, WithColour)):
        return source
    if isinstance(source, (str, Path)):
        return ModelFeatures(load_feature_model(str(source)), short_side)
    if isinstance(source, SnDModel):
        name = str(getattr(source.config, "_name_or_path", "") or "model")
        return ModelFeatures(FeatureModel(name, name, source.eval(), weights_hash(source)), short_side)
    if isinstance(source, FeatureModel):
        return ModelFeatures(source, short_side)
    if isinstance(source, torch.Tensor):
        return TensorFeatures(source)
    if hasattr(source, "identity") and hasattr(source, "name") and callable(source):
        return source
    if callable(source):
        return CallableFeatures(source, getattr(source, "__name__", "callable"))
    raise TypeError(
        f"the feature model must be a model spec, SnDModel, FeatureModel, feature tensor or callable, got {type(source).__name__}"
    )


def teacher_features(source: FeatureSource, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """The source's features of some views, checked. [V, C, h, w]"""
    features = source(images, views)
    if not isinstance(features, torch.Tensor) or features.ndim != 4 or features.shape[0] != len(views):
        shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"feature source {source.name!r} must return [{len(views)}, C, h, w] features, got {shape}")
    if not torch.isfinite(features).all():
        raise ValueError(f"feature source {source.name!r} returned non-finite features")
    return features.float()


def upsample(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of feature maps to pixels (half-pixel centres). [V, C, h, w] → [V, C, H, W]"""
    if tuple(features.shape[-2:]) == tuple(size):
        return features
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


def fit_feature_space(features: torch.Tensor, dim: int, source: FeatureSource) -> FeatureSpace:
    """PCA of the teacher's features of the training views, keeping ``min(dim, C)`` components.

    The projected features are divided by one common scale so that they have unit variance per
    channel on average, which keeps the fitting's learning rates and loss weights independent of
    the teacher.

    Args:
        features: teacher features of the training views, any resolution. [V, C, h, w]
        dim: wanted field feature channels k.
        source: the teacher (its name and fingerprint are recorded).
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"`feature_dim` must be a positive int, got {dim!r}.")
    channels = features.shape[1]
    samples = features.movedim(1, -1).reshape(-1, channels).double()
    mean = samples.mean(0)
    centred = samples - mean
    covariance = centred.T @ centred / max(len(samples) - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    keep = min(dim, channels)
    basis = eigenvectors.flip(-1)[:, :keep]
    # Deterministic signs: the largest loading of every component is positive.
    strongest = basis.abs().argmax(0)
    basis = basis * torch.where(basis[strongest, torch.arange(keep)] < 0, -1.0, 1.0).to(basis)
    variance = eigenvalues.flip(-1)[:keep].clamp_min(0).mean()
    scale = float(variance.sqrt().clamp_min(1e-12))
    return FeatureSpace(mean.float(), basis.float(), scale, source.name, source.identity)
