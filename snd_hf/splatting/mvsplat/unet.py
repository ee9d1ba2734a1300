"""The 2D U-Net of MVSplat's depth predictor (the pieces of the latent-diffusion U-Net it uses).

MVSplat refines both its 1/4-resolution cost volume and its full-resolution depth features with a
post-norm U-Net without timestep conditioning: residual blocks (conv → GroupNorm → SiLU, twice),
strided-conv downsampling, nearest ×2 upsampling followed by a conv, and, at chosen downsampling
rates, attention blocks that attend jointly over the tokens of *all* context views of a scene.

Every conv/attention tensor here is ordered ``(b v)`` (views of one scene consecutive); the
attention blocks need ``num_views`` to regroup the tokens per scene. Module names reproduce the
original (``input_blocks``, ``middle_block``, ``output_blocks``, ``out``, ``in_layers``,
``out_layers``, ``skip_connection``, ``qkv``, ``proj_out``, ``norm``, ``op``, ``conv``) so that
MVSplat checkpoints load with identical keys.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """The U-Net's GroupNorm: 8 groups when ``channels`` is a multiple of 8, else 4."""
    return nn.GroupNorm(8 if channels % 8 == 0 else 4, channels)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    """Post-norm residual block: ``skip(x) + (conv → GN → SiLU → conv → GN → SiLU)(x)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(conv3x3(in_channels, out_channels), group_norm(out_channels), nn.SiLU())
        self.out_layers = nn.Sequential(conv3x3(out_channels, out_channels), group_norm(out_channels), nn.SiLU())
        self.skip_connection = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[(B V), C_in, h, w] → [(B V), C_out, h, w]."""
        return self.skip_connection(hidden_states) + self.out_layers(self.in_layers(hidden_states))


class CrossViewAttention(nn.Module):
    """Post-norm multi-head self-attention over the tokens of all views of a scene.

    Heads have ``head_channels`` channels. The fused ``qkv`` projection is laid out head-major
    (for each head: its q, k and v channels), as in the original's "legacy" attention.
    """

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        if channels % head_channels != 0:
            raise ValueError(f"`channels` ({channels}) must be a multiple of `head_channels` ({head_channels}).")
        self.num_heads = channels // head_channels
        self.head_channels = head_channels
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.norm = group_norm(channels)

    def forward(self, hidden_states: torch.Tensor, num_views: int) -> torch.Tensor:
        """[(B V), C, h, w] → [(B V), C, h, w]; every token attends to the V·h·w tokens of its scene."""
        batch_views, channels, height, width = hidden_states.shape
        batch, tokens = batch_views // num_views, height * width
        flat = hidden_states.reshape(batch_views, channels, tokens)
        qkv = self.qkv(flat).reshape(batch, num_views, self.num_heads, 3, self.head_channels, tokens)
        # [B, heads, 3, V * T, head_channels]
        qkv = qkv.permute(0, 2, 3, 1, 5, 4).reshape(batch, self.num_heads, 3, num_views * tokens, self.head_channels)
        attended = F.scaled_dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        attended = attended.reshape(batch, self.num_heads, num_views, tokens, self.head_channels)
        attended = attended.permute(0, 2, 1, 4, 3).reshape(batch_views, channels, tokens)
        return (flat + self.norm(self.proj_out(attended))).reshape(batch_views, channels, height, width)


class Downsample(nn.Module):
    """Strided 3x3 convolution halving the resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = conv3x3(channels, channels, stride=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] → [N, C, ceil(h / 2), ceil(w / 2)]."""
        return self.op(hidden_states)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] → [N, C, 2h, 2w]."""
        return self.conv(F.interpolate(hidden_states, scale_factor=2, mode="nearest"))


def run_layers(layers: nn.Module, hidden_states: torch.Tensor, num_views: int) -> torch.Tensor:
    """Apply ``layers`` in order, passing ``num_views`` to the ones that mix views (attention, U-Net)."""
    for layer in layers:
        if isinstance(layer, (CrossViewAttention, UNet)):
            hidden_states = layer(hidden_states, num_views)
        else:
            hidden_states = layer(hidden_states)
    return hidden_states


class UNet(nn.Module):
    """Post-norm U-Net with one residual block per level and cross-view attention.

    Args:
        channels: base width; input and output have this many channels.
        channel_mult: width multiplier of each level (one downsampling between levels).
        attention_resolutions: downsampling rates (1, 2, 4, ...) whose blocks get attention.
        head_channels: channels per attention head.
    """

    def __init__(
        self,
        channels: int,
        channel_mult: Sequence[int],
        attention_resolutions: Sequence[int],
        head_channels: int = 32,
    ) -> None:
        super().__init__()
        self.num_levels = len(channel_mult)
        width = channels
        rate = 1
        skip_widths = [width]
        input_blocks = [nn.ModuleList([conv3x3(channels, channels)])]
        for level, mult in enumerate(channel_mult):
            stage: list[nn.Module] = [ResBlock(width, channels * mult)]
            width = channels * mult
            if rate in attention_resolutions:
                stage.append(CrossViewAttention(width, head_channels))
            input_blocks.append(nn.ModuleList(stage))
            skip_widths.append(width)
            if level != len(channel_mult) - 1:
                input_blocks.append(nn.ModuleList([Downsample(width)]))
                skip_widths.append(width)
                rate *= 2
        self.input_blocks = nn.ModuleList(input_blocks)

        # The original middle block is ResBlock, Identity, ResBlock: keep its indices 0 and 2.
        self.middle_block = nn.Sequential(OrderedDict([("0", ResBlock(width, width)), ("2", ResBlock(width, width))]))

        output_blocks = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for index in range(2):
                stage = [ResBlock(width + skip_widths.pop(), channels * mult)]
                width = channels * mult
                if rate in attention_resolutions:
                    stage.append(CrossViewAttention(width, head_channels))
                if level and index == 1:
                    stage.append(Upsample(width))
                    rate //= 2
                output_blocks.append(nn.ModuleList(stage))
        self.output_blocks = nn.ModuleList(output_blocks)
        self.out = nn.Sequential(conv3x3(channels, channels), group_norm(channels), nn.SiLU())

    def forward(self, hidden_states: torch.Tensor, num_views: int) -> torch.Tensor:
        """[(B V), C, h, w] → [(B V), C, h, w]; h and w must be multiples of 2^(levels - 1)."""
        factor = 2 ** (self.num_levels - 1)
        if hidden_states.shape[-2] % factor or hidden_states.shape[-1] % factor:
            raise ValueError(
                f"UNet input height and width must be multiples of {factor}, got {tuple(hidden_states.shape[-2:])}."
            )
        skips = []
        for stage in self.input_blocks:
            hidden_states = run_layers(stage, hidden_states, num_views)
            skips.append(hidden_states)
        hidden_states = self.middle_block(hidden_states)
        for stage in self.output_blocks:
            hidden_states = run_layers(stage, torch.cat([hidden_states, skips.pop()], dim=1), num_views)
        return self.out(hidden_states)
