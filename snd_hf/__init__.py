"""snd-hf: Splat and Distill (SnD) 3D-aware DINOv2 features, Hugging Face style.

Importing the package registers `SnDConfig` / `SnDModel` / `SnDBackbone` / `SnDImageProcessor` with
transformers' Auto classes (model type "snd"), so `AutoModel.from_pretrained(dir)`,
`AutoBackbone`, `AutoImageProcessor` and `pipeline("image-feature-extraction", model=dir)` work on an
SnD checkpoint directory without `trust_remote_code`.
"""

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel

from .configuration_snd import SND_VARIANTS, SnDConfig
from .image_processing_snd import SnDImageProcessor
from .loading import (
    CheckpointError,
    convert_original_state_dict,
    infer_config_from_original,
    load_original_checkpoint,
    original_shapes,
    save_original_checkpoint,
    to_original_state_dict,
)
from .modeling_snd import (
    SnDBackbone,
    SnDModel,
    SnDModelOutput,
    SnDPreTrainedModel,
    load_backbone_weights,
)

__version__ = "0.1.0"

AutoConfig.register(SnDConfig.model_type, SnDConfig, exist_ok=True)
AutoModel.register(SnDConfig, SnDModel, exist_ok=True)
AutoBackbone.register(SnDConfig, SnDBackbone, exist_ok=True)
AutoImageProcessor.register(SnDConfig, SnDImageProcessor, exist_ok=True)

__all__ = [
    "SND_VARIANTS",
    "CheckpointError",
    "SnDBackbone",
    "SnDConfig",
    "SnDImageProcessor",
    "SnDModel",
    "SnDModelOutput",
    "SnDPreTrainedModel",
    "convert_original_state_dict",
    "infer_config_from_original",
    "load_backbone_weights",
    "load_original_checkpoint",
    "original_shapes",
    "save_original_checkpoint",
    "to_original_state_dict",
]
