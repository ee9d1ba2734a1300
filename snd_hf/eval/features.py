"""Frozen features of the compared models, extracted once per model and image.

A model is named on the command line as ``PATH`` or ``NAME=PATH``: an snd-hf checkpoint
directory or Hub id (``SnDModel.from_pretrained``), an original-layout DINOv2 / SnD state
dict ``.pth`` / ``.safetensors`` file in the torch.hub, timm or transformers layout, with or without registers
(``SnDModel.from_original_checkpoint``: DINOv2, FiT3D, SnD), ``CKPT@BASE`` (MEF's Lightning checkpoint
on the DINOv2 weights it was trained from, ``snd_hf.baselines.load_baseline``), or ``init:RUN_DIR``,
the weights the training run in ``RUN_DIR`` started from (rebuilt from its ``config.yaml`` by
:mod:`snd_hf.initial_weights`: the baseline a run is compared against). With
``concat_with`` (FiT3D's probing mode) the features of a second model, usually the original
DINOv2, are concatenated in front of the compared model's along channels.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from snd_hf.initial_weights import initial_run_backbone
from snd_hf.loading import weights_hash
from snd_hf.modeling_snd import SnDModel

__all__ = ["DenseFeatures", "FeatureModel", "extract_features", "load_feature_model", "parse_model_spec"]


@dataclass
class DenseFeatures:
    """The frozen features every probe reads.

    Attributes:
        patch: last-layer patch tokens after the final norm (depth, segmentation,
            correspondence). [N, C, h, w]
        cls: the CLS token after the final norm (depth). [N, C]
        prenorm: last-layer patch tokens before the final norm (surface normals). [N, C, h, w]
    """

    patch: torch.Tensor
    cls: torch.Tensor
    prenorm: torch.Tensor

    def __getitem__(self, index: torch.Tensor | slice | int) -> DenseFeatures:
        return DenseFeatures(*(getattr(self, field.name)[index] for field in fields(self)))

    @staticmethod
    def cat(parts: list[DenseFeatures], dim: int = 0) -> DenseFeatures:
        """Concatenate along images (``dim=0``) or channels (``dim=1``)."""
        return DenseFeatures(*(torch.cat([getattr(part, field.name) for part in parts], dim) for field in fields(DenseFeatures)))


@dataclass
class FeatureModel:
    """A model under comparison.

    Attributes:
        name: label in tables and pictures.
        source: where it was loaded from.
        model: the backbone, eval mode.
        weights_hash: SHA-256 of its architecture and weights (and the concatenated model's), the cache key.
        concat_with: model whose features go in front of this one's (FiT3D mode), or None.
    """

    name: str
    source: str
    model: SnDModel
    weights_hash: str
    concat_with: FeatureModel | None = None


INIT_PREFIX = "init:"


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``"NAME=PATH"`` → (NAME, PATH); a bare ``PATH`` is named after its file or folder stem
    (``init:RUN_DIR`` after the run's folder, plus ``-init``)."""
    name, separator, path = spec.partition("=")
    if not separator:
        path = spec
        run_dir = spec.removeprefix(INIT_PREFIX)
        name = (Path(run_dir.rstrip("/")).stem or run_dir) + ("-init" if spec.startswith(INIT_PREFIX) else "")
    if not name or not path:
        raise ValueError(f"model spec must be PATH or NAME=PATH, got {spec!r}")
    return name, path


def _load_model(source: str) -> SnDModel:
    if source.startswith(INIT_PREFIX):
        return initial_run_backbone(source.removeprefix(INIT_PREFIX))
    path = Path(source)
    checkpoint, at, base = source.rpartition("@")
    if at and not path.exists() and Path(checkpoint).is_file():
        from snd_hf.baselines import load_baseline  # CKPT@BASE: MEF's checkpoint on its DINOv2 weights

        return load_baseline(checkpoint, base=base)
    if path.suffix in (".pth", ".pt", ".ckpt", ".safetensors") and path.is_file():
        return SnDModel.from_original_checkpoint(path)
    return SnDModel.from_pretrained(source).eval()


def load_feature_model(spec: str, concat_with: str | None = None) -> FeatureModel:
    """Load a model to compare (see the module docstring for ``spec``).

    Args:
        spec: ``PATH``, ``init:RUN_DIR`` or ``NAME=`` either.
        concat_with: ``PATH`` of a model whose features are concatenated in front (FiT3D mode).

    Returns:
        the loaded model with its cache key.
    """
    name, source = parse_model_spec(spec)
    model = _load_model(source)
    fingerprint = weights_hash(model)
    base = None
    if concat_with is not None:
        base = load_feature_model(concat_with)
        fingerprint = hashlib.sha256(f"{base.weights_hash}+{fingerprint}".encode()).hexdigest()
    return FeatureModel(name, source, model, fingerprint, base)


@torch.no_grad()
def _forward(model: SnDModel, images: torch.Tensor, input_size: tuple[int, int]) -> DenseFeatures:
    # Deviation (eval: correspondence input): every task uses the ImageNet statistics, also correspondence (Probe3D: 0.5 / 0.5).
    output = model.image_features(images, size=input_size, antialias=True, output_hidden_states=True)
    height, width = output.feature_map.shape[-2:]
    # The patches are the last h*w tokens, after CLS and any registers.
    prenorm = output.hidden_states[-1][:, -height * width :].transpose(1, 2).reshape(images.shape[0], -1, height, width)
    return DenseFeatures(output.feature_map, output.pooler_output, prenorm)


def extract_features(
    feature_model: FeatureModel,
    images: torch.Tensor,
    input_size: tuple[int, int],
    batch_size: int = 8,
    description: str = "features",
    state: PartialState | None = None,
) -> DenseFeatures:
    """Features of a set of images, resized (bilinear, antialiased) to ``input_size``.

    Args:
        feature_model: the model (with its optional concatenated model).
        images: RGB in [0, 1]. [N, 3, H, W]
        input_size: model input ``(H', W')``, multiples of the patch size.
        batch_size: images per forward pass.
        description: progress-bar label.
        state: accelerate's state of a run in several processes (:func:`snd_hf.distributed.process_state`):
            every process must call this with the same images; each runs its share of the batches
            (``split_between_processes``) and gets every image's features back (``gather_object``). The batches
            are the ones a single process runs, so the features are the same.

    Returns:
        features of every image, on CPU in float32.
    """
    patch = feature_model.model.config.patch_size
    if input_size[0] % patch or input_size[1] % patch:
        raise ValueError(f"input_size must be multiples of the patch size {patch}, got {tuple(input_size)}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
    device = next(feature_model.model.parameters()).device
    starts = list(range(0, images.shape[0], batch_size))
    distributed = state is not None and state.num_processes > 1
    with state.split_between_processes(starts) if distributed else contextlib.nullcontext(starts) as mine:
        parts = []
        for start in tqdm(mine, desc=description, leave=False, disable=None):
            batch = images[start : start + batch_size].to(device=device, dtype=torch.float32)
            features = _forward(feature_model.model, batch, input_size)
            if feature_model.concat_with is not None:
                features = DenseFeatures.cat([_forward(feature_model.concat_with.model, batch, input_size), features], dim=1)
            parts.append(DenseFeatures(*(getattr(features, f.name).float().cpu() for f in fields(DenseFeatures))))
    return DenseFeatures.cat(gather_object(parts) if distributed else parts)
