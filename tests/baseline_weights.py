"""Random weights in the exact published layouts of the paper's baselines (tests/test_layouts.py,
tests/test_baselines.py, tests/eval/test_paper_table.py): torch.hub and timm DINOv2 (FiT3D), with and
without registers, and MEF's Lightning checkpoint."""

from __future__ import annotations

from collections import OrderedDict

import torch

from snd_hf import SnDConfig, SnDModel
from snd_hf.loading import to_original_state_dict

SIZES = [(224, 224), (448, 448), (476, 630), (518, 518)]
TOLERANCE = 1e-5
MEF_RANK = 4


def random_hub_state_dict(num_register_tokens: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torch.hub `dinov2_vits14` (or `_reg`) state dict with random, non-trivial weights."""
    torch.manual_seed(seed)
    model = SnDModel(SnDConfig.from_variant("small", num_register_tokens=num_register_tokens))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lambda1" in name or "position" in name or "register" in name or "cls" in name:
                parameter.normal_(0.0, 0.5)
    return to_original_state_dict(model.state_dict(), model.config)


def timm_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights as timm's `vit_small_patch14_dinov2` / `vit_small_patch14_reg4_dinov2` store them
    (FiT3D's checkpoints): no mask_token; registers as `reg_token` with a pos_embed without class slot."""
    timm = {key: value for key, value in state_dict.items() if key != "mask_token"}
    if "register_tokens" in timm:
        timm["reg_token"] = timm.pop("register_tokens")
        timm["pos_embed"] = timm["pos_embed"][:, 1:]
    return timm


def mef_checkpoint(width: int = 384, seed: int = 2) -> dict:
    """A Lightning checkpoint as MEF's `on_save_checkpoint` writes it, with random LoRA and refine_conv."""
    generator = torch.Generator().manual_seed(seed)
    checkpoint = {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "2.1.3",
        "state_dict": {"refine_conv": OrderedDict(
            weight=torch.randn(width, width, 3, 3, generator=generator) * 0.02, bias=torch.randn(width, generator=generator) * 0.1
        )},
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "", "best_model_score": None}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(1200.0)}}, "param_groups": [{"lr": 1e-5, "params": [0]}]}],
        "lr_schedulers": [],
    }
    for i in range(8):
        checkpoint[f"w_a_{i:03d}"] = torch.randn(MEF_RANK, width, generator=generator) * 0.1
        checkpoint[f"w_b_{i:03d}"] = torch.randn(width, MEF_RANK, generator=generator) * 0.1
    return checkpoint
