"""snd-hf: Splat and Distill (SnD) 3D-aware DINOv2 features, Hugging Face style.

Importing the package registers `SnDConfig` / `SnDModel` / `SnDBackbone` / `SnDImageProcessor` with
transformers' Auto classes (model type "snd"), so `AutoModel.from_pretrained(dir)`,
`AutoImageProcessor.from_pretrained(dir)` and `pipeline("image-feature-extraction", model=dir)` work on
an SnD checkpoint directory or Hub repo without `trust_remote_code`, and task models build an SnD
backbone from `backbone_config=SnDConfig(...)` (`AutoBackbone.from_config`).

For a backbone from a local folder use `SnDBackbone.from_pretrained(dir, out_indices=[...])`:
`AutoBackbone.from_pretrained` works with Hub repo ids only, because transformers (5.24) first asks
the Hub whether the argument is a repo and refuses a local path (HFValidationError) before reading
it; its own Dinov2 folders fail the same way.
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
