"""A model's fingerprint: equal hashes mean equal features (feature shards and fields record it)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import nn


_NOT_ARCHITECTURE = ("_name_or_path", "transformers_version", "training_info", "architectures", "dtype")


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of the architecture (config) and every weight: equal hashes mean equal features."""
    # Fields that name or annotate the checkpoint without changing its features stay out.
    architecture = {key: value for key, value in model.config.to_dict().items() if key not in _NOT_ARCHITECTURE}
    digest = hashlib.sha256(json.dumps(architecture, sort_keys=True, default=str).encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
