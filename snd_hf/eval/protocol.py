"""The position-embedding resize each probe uses: the protocol of the paper's code for that task.

The paper's depth and segmentation probes (Splat-and-Distill `evaluation1/utils/model_utils.py`, after
FiT3D's protocol) load SnD, FiT3D and DINOv2 weights into timm with `dynamic_img_size=True`, whose
resize is bicubic to the exact grid with antialiasing; its correspondence and normal probes (Probe3D)
and SnD's training use torch.hub's, bicubic by scale factor (grid + 0.1) / 37 without antialiasing.
The same weights give other features at every size but the 518 px training one, so `snd eval` applies per probe the protocol the paper used (`PAPER_RESIZE`), or one protocol for all
(`--resize torchhub|timm`), and records it in results.json.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from snd_hf.loading import EXACT_ANTIALIASED_RESIZE
from snd_hf.modeling_snd import SnDPreTrainedModel

__all__ = ["PAPER_RESIZE", "RESIZE_PROTOCOLS", "ResizeProtocol", "position_resize", "resize_settings"]

ResizeProtocol = Literal["torchhub", "timm"]
RESIZE_PROTOCOLS: tuple[str, ...] = ("torchhub", "timm")
# Deviation (docs/deviations.md, 39): the paper's protocol per probe by default, one for all with --resize.
PAPER_RESIZE: dict[str, ResizeProtocol] = {
    "depth": "timm",
    "segmentation": "timm",
    "normals": "torchhub",
    "correspondence": "torchhub",
}
_TORCH_HUB_RESIZE: dict[str, Any] = {"interpolate_offset": 0.1, "interpolate_antialias": False}


def resize_settings(model: SnDPreTrainedModel, protocol: ResizeProtocol) -> dict[str, Any]:
    """The `SnDConfig` resize fields of `protocol` for `model`: "timm" resizes to the exact grid with
    antialiasing; "torchhub" is torch.hub's builder for the architecture, by scale factor with offset 0.1,
    except for register models, which torch.hub builds with timm's resize."""
    if protocol not in RESIZE_PROTOCOLS:
        raise ValueError(f"resize protocol must be one of {RESIZE_PROTOCOLS}, got {protocol!r}")
    if protocol == "timm" or model.config.num_register_tokens:
        return dict(EXACT_ANTIALIASED_RESIZE)
    return dict(_TORCH_HUB_RESIZE)


@contextmanager
def position_resize(model: SnDPreTrainedModel, protocol: ResizeProtocol) -> Iterator[None]:
    """Run `model` (its config and embeddings) with `protocol`'s resize inside the block, then restore its own."""
    settings = resize_settings(model, protocol)
    saved = {name: getattr(model.config, name) for name in settings}
    try:
        for name, value in settings.items():
            setattr(model.config, name, value)
            setattr(model.embeddings, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(model.config, name, value)
            setattr(model.embeddings, name, value)
