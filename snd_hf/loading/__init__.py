"""Local checkpoint loading: original torch.hub DINOv2 / SnD state dicts <-> snd-hf `SnDModel` weights.

The key map is data (`ORIGINAL_TO_HF`), applied in both directions with strict checks: every problem
(missing, unexpected or misshaped keys) is reported at once in one `CheckpointError`.
Files are read with `torch.load(weights_only=True)` or safetensors only, so a checkpoint can never
run code; zip archives are CRC-checked and every tensor must be finite. `load_original_checkpoint`
recognises the layouts people actually have (DINOv2 training checkpoints, DDP/compile/peft wrappers,
FSDP block chunks, unmerged LoRA merged exactly as peft does); anything else is a `CheckpointError`
naming what it did not understand. Native (`save_pretrained`) weights are checked against their
config from the safetensors headers alone (`check_native_weights`). Hub resolution lives in
`snd_hf.hub`.

One concept per module, each importing only the ones above it in this list:

- `errors`: `CheckpointError` and how messages list keys.
- `keymap`: the original <-> snd-hf key map (`ORIGINAL_TO_HF`) and the renaming it drives.
- `lora`: unmerged peft LoRA merged as peft's `merge_and_unload()`.
- `layouts`: wrappers, training models, FSDP chunks, transformers' and timm's DINOv2, MEF's refusal.
- `architecture`: config -> every key and shape (`original_shapes`), and back (`infer_config_from_original`).
- `conversion`: strict renaming both ways (`convert_original_state_dict`, `to_original_state_dict`).
- `sidecar`: the JSON beside a .pth recording what its tensors cannot tell.
- `reading`: one file read safely (`read_checkpoint_file`: weights_only, CRC-32, finite tensors).
- `native`: `save_pretrained` weights checked against their config from the headers alone.
- `original`: original-layout files in and out (`read_original_checkpoint`, `save_original_checkpoint`).
- `fingerprint`: `weights_hash`.
"""

from .architecture import SHAPE_FIELDS, infer_config_from_original, original_shapes
from .conversion import check_state_dict, convert_original_state_dict, to_original_state_dict
from .errors import CheckpointError
from .fingerprint import weights_hash
from .keymap import ORIGINAL_TO_HF
from .layouts import EXACT_ANTIALIASED_RESIZE, LAYOUT_CONFIG_DEFAULTS
from .native import check_native_weights, read_native_shapes
from .original import OriginalCheckpoint, load_original_checkpoint, read_original_checkpoint, save_original_checkpoint
from .reading import CHECKPOINT_SUFFIXES, check_finite, read_checkpoint_file
from .sidecar import original_checkpoint_config, read_sidecar, sidecar_path, write_sidecar

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "EXACT_ANTIALIASED_RESIZE",
    "SHAPE_FIELDS",
    "CheckpointError",
    "LAYOUT_CONFIG_DEFAULTS",
    "ORIGINAL_TO_HF",
    "OriginalCheckpoint",
    "check_finite",
    "check_native_weights",
    "check_state_dict",
    "convert_original_state_dict",
    "infer_config_from_original",
    "load_original_checkpoint",
    "original_checkpoint_config",
    "original_shapes",
    "read_checkpoint_file",
    "read_native_shapes",
    "read_original_checkpoint",
    "read_sidecar",
    "save_original_checkpoint",
    "sidecar_path",
    "to_original_state_dict",
    "weights_hash",
    "write_sidecar",
]
