"""SnD model configuration: the DINOv2 ViT hyperparameters plus the SnD variant it was trained as."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Literal

from huggingface_hub.dataclasses import strict
from transformers.backbone_utils import BackboneConfigMixin
from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import CONFIG_NAME

from .schema import ModelConfigSchema, read_json, validate

# The published SnD students: DINOv2 ViT-S/14 and ViT-B/14 from torch.hub (37x37 position grid
# at 518 px, layer scale, no registers). Architecture fields only; the rest keep the defaults.
SND_VARIANTS: dict[str, dict[str, int]] = {
    "small": {"hidden_size": 384, "num_attention_heads": 6, "num_hidden_layers": 12},
    "base": {"hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12},
}


@strict
class SnDConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of an SnD student: a torch.hub DINOv2 ViT (optionally fine-tuned by Splat and Distill).

    The defaults describe the ViT-B/14 architecture. Fields follow transformers' `Dinov2Config`; the SnD
    specific ones are:

    interpolate_offset (`float`, defaults to 0.1):
        Offset added to the patch grid before computing the bicubic scale factor when the position
        embeddings are resized, as the original DINOv2 does (0 resizes to the exact grid size instead).
    interpolate_antialias (`bool`, defaults to `False`):
        Antialiasing in that bicubic resize (the original default). torch.hub's register models, transformers'
        `Dinov2WithRegistersModel` and timm (`dynamic_img_size=True`) resize with offset 0 and antialiasing.
    num_register_tokens (`int`, defaults to 0):
        Register tokens (Darcet et al., "Vision Transformers Need Registers"), inserted after the CLS token once
        the position embeddings are added, so tokens run [CLS, registers, patches]; they are not in `feature_map`.
    size (`str`, *optional*):
        The published variant these weights are (`"small"` or `"base"`), `None` for custom architectures.
    blending (`bool`, *optional*):
        Whether the SnD training blended features within instance segments; `None` when unknown or not
        an SnD checkpoint (e.g. the plain DINOv2 initialisation).
    training_info (`dict`, *optional*):
        Free-form record written by the trainer (its configuration and step).
    apply_layernorm / reshape_hidden_states / out_features / out_indices:
        Backbone options, as in `Dinov2Config`: stages are `"stem"` (embeddings) and `"stage1"` ...
        `"stage{num_hidden_layers}"` (block outputs).

    Example:

    ```python
    >>> from snd_hf import SnDConfig, SnDModel
    >>> config = SnDConfig.from_variant("small", blending=True)
    >>> model = SnDModel(config)  # random weights with the ViT-S/14 architecture
    ```"""

    model_type = "snd"
    variants: ClassVar[dict[str, dict[str, int]]] = SND_VARIANTS

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: int | float = 4
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    image_size: int = 518
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    layerscale_value: float = 1.0
    drop_path_rate: float | int = 0.0
    use_swiglu_ffn: bool = False
    interpolate_offset: float | int = 0.1
    interpolate_antialias: bool = False
    num_register_tokens: int = 0
    size: Literal["small", "base"] | None = None
    blending: bool | None = None
    training_info: dict[str, Any] | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True

    def __post_init__(self, **kwargs):
        validate(ModelConfigSchema, {name: getattr(self, name) for name in ModelConfigSchema.model_fields}, "SnDConfig")
        self.stage_names = ["stem"] + [f"stage{idx}" for idx in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    @classmethod
    def check_file(cls, values: Any, source: str | os.PathLike) -> dict[str, Any]:
        """``values`` read from the ``config.json`` at ``source``, checked by ``ModelConfigSchema`` with
        the missing fields at their defaults (raises ``SchemaError`` naming ``source`` and the key)."""
        defaults = {field.name: field.default for field in dataclasses.fields(cls) if field.name in ModelConfigSchema.model_fields}
        validate(ModelConfigSchema, {**defaults, **values} if isinstance(values, dict) else values, source)
        return values

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> SnDConfig:
        # AutoConfig / AutoModel read config.json themselves and pass its folder as name_or_path:
        # checked here so that their errors name the file too.
        if kwargs.get("name_or_path"):
            cls.check_file(config_dict, os.path.join(str(kwargs["name_or_path"]), kwargs.get("subfolder") or "", CONFIG_NAME))
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        # transformers' reader, through the schema layer: size and nesting caps, ranges, the file named.
        return cls.check_file(cls._decode_special_floats(read_json(json_file)), json_file)

    @property
    def grid_size(self) -> int:
        """Side of the square position-embedding grid (37 for 518 px and patch 14)."""
        return self.image_size // self.patch_size

    @classmethod
    def from_variant(cls, size: Literal["small", "base"], blending: bool | None = None, **kwargs) -> SnDConfig:
        """The configuration of a published SnD variant (`size` "small" = ViT-S/14, "base" = ViT-B/14)."""
        if size not in cls.variants:
            raise ValueError(f"size must be one of {sorted(cls.variants)}, got {size!r}")
        return cls(**{**cls.variants[size], "size": size, "blending": blending, **kwargs})


__all__ = ["SND_VARIANTS", "SnDConfig"]
