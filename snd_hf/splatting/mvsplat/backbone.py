"""MVSplat's multi-view feature backbone: a UniMatch CNN and a cross-view Swin transformer.

The CNN (a small ResNet with instance norm) maps each ImageNet-normalised view to 1/4-resolution
features; a sine position embedding is added per attention window, then six transformer blocks
alternate plain and shifted 2x2-window attention. Each block runs self-attention within a view,
then cross-attention from the view to every other view plus an MLP. The output features feed the
cost volume; the CNN features are also returned for the depth upsampler.

Module names follow the original (``backbone.conv1``, ``backbone.layer1.0.conv1``,
``transformer.layers.0.self_attn.q_proj``, ...) so MVSplat checkpoints load with identical keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# Additive attention bias between tokens from different regions of a shifted window.
SHIFTED_WINDOW_MASK_VALUE = -100.0


class ResidualBlock(nn.Module):
    """Two 3x3 convs with instance norm and ReLU, and a 1x1 projection when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(out_channels)
        self.norm2 = nn.InstanceNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride), nn.InstanceNorm2d(out_channels)
            )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] → [N, C_out, H / stride, W / stride]."""
        residual = F.relu(self.norm1(self.conv1(hidden_states)))
        residual = F.relu(self.norm2(self.conv2(residual)))
        shortcut = hidden_states if self.downsample is None else self.downsample(hidden_states)
        return F.relu(shortcut + residual)


class CNNEncoder(nn.Module):
    """UniMatch's CNN at 1/4 resolution: 7x7/2 stem, then stages of 64 (1/2), 96 (1/4), 128 (1/4)."""

    def __init__(self, feature_channels: int = 128) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.norm1 = nn.InstanceNorm2d(64)
        self.layer1 = nn.Sequential(ResidualBlock(64, 64), ResidualBlock(64, 64))
        self.layer2 = nn.Sequential(ResidualBlock(64, 96, stride=2), ResidualBlock(96, 96))
        self.layer3 = nn.Sequential(ResidualBlock(96, 128), ResidualBlock(128, 128))
        self.conv2 = nn.Conv2d(128, feature_channels, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] normalised images → [N, C, H/4, W/4] features."""
        hidden_states = F.relu(self.norm1(self.conv1(pixel_values)))
        hidden_states = self.layer3(self.layer2(self.layer1(hidden_states)))
        return self.conv2(hidden_states)


def sine_position_embedding(
    height: int, width: int, channels: int, device: torch.device, temperature: float = 10000.0
) -> torch.Tensor:
    """DETR's normalised sine embedding of a ``height x width`` grid.

    Channels ``[0, C/2)`` encode the row and ``[C/2, C)`` the column; within each half, even
    channels are sines and odd channels cosines, with frequencies shared by consecutive pairs.

    Returns:
        the embedding. [C, height, width]
    """
    half = channels // 2
    eps = 1e-6
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * (2 * math.pi)
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * (2 * math.pi)
    index = torch.arange(half, dtype=torch.float32, device=device)
    periods = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / half)
    is_even = (index % 2 == 0)[:, None]

    def encode(coordinates: torch.Tensor) -> torch.Tensor:  # [L] → [half, L]
        angles = coordinates[None, :] / periods[:, None]
        return torch.where(is_even, angles.sin(), angles.cos())

    row_embedding = encode(rows)[:, :, None].expand(half, height, width)
    col_embedding = encode(cols)[:, None, :].expand(half, height, width)
    return torch.cat([row_embedding, col_embedding], dim=0)


def shifted_window_mask(height: int, width: int, splits: int, device: torch.device) -> torch.Tensor:
    """Attention bias of shifted-window attention on an ``height x width`` map cut into
    ``splits x splits`` windows: -100 between tokens that came from different regions before
    the cyclic shift, 0 otherwise.

    Returns:
        the bias per window, windows row-major. [splits², T, T] with T = (height/splits)·(width/splits)
    """
    window_h, window_w = height // splits, width // splits
    shift_h, shift_w = window_h // 2, window_w // 2
    regions = torch.zeros(height, width, device=device)
    label = 0
    for rows in (slice(0, -window_h), slice(-window_h, -shift_h), slice(-shift_h, None)):
        for cols in (slice(0, -window_w), slice(-window_w, -shift_w), slice(-shift_w, None)):
            regions[rows, cols] = label
            label += 1
    windows = window_partition(regions[None, :, :, None], splits)[0, :, :, 0]  # [K*K, T]
    different = windows[:, None, :] != windows[:, :, None]
    return different.float() * SHIFTED_WINDOW_MASK_VALUE


def window_partition(hidden_states: torch.Tensor, splits: int) -> torch.Tensor:
    """[N, H, W, C] → [N, K*K, T, C]: ``splits x splits`` windows, row-major, tokens row-major."""
    batch, height, width, channels = hidden_states.shape
    window_h, window_w = height // splits, width // splits
    windows = hidden_states.reshape(batch, splits, window_h, splits, window_w, channels)
    return windows.permute(0, 1, 3, 2, 4, 5).reshape(batch, splits * splits, window_h * window_w, channels)


def window_merge(windows: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [N, K*K, T, C] → [N, H, W, C]."""
    batch, num_windows, _, channels = windows.shape
    splits = math.isqrt(num_windows)
    window_h, window_w = height // splits, width // splits
    merged = windows.reshape(batch, splits, splits, window_h, window_w, channels)
    return merged.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


def window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    height: int,
    width: int,
    splits: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Single-head attention inside ``splits x splits`` windows, optionally shifted.

    Each query token attends to the tokens of the same window in every one of the M key maps.
    With ``mask`` (from :func:`shifted_window_mask`) the maps are first rolled by half a window,
    as in Swin, and rolled back afterwards.

    Args:
        query: queries. [N, H*W, C]
        key: keys of M maps. [N, M, H*W, C]
        value: values of M maps. [N, M, H*W, C]
        mask: shifted-window bias, or None for plain windows. [K*K, T, T]

    Returns:
        the attended values. [N, H*W, C]
    """
    batch, num_maps, _, channels = key.shape
    query = query.reshape(batch, height, width, channels)
    key = key.reshape(batch * num_maps, height, width, channels)
    value = value.reshape(batch * num_maps, height, width, channels)
    if mask is not None:
        shift = (-(height // splits // 2), -(width // splits // 2))
        query, key, value = (torch.roll(t, shifts=shift, dims=(1, 2)) for t in (query, key, value))
    query = window_partition(query, splits)  # [N, K*K, T, C]
    tokens = query.shape[2]

    def gather_maps(t: torch.Tensor) -> torch.Tensor:  # → [N, K*K, M*T, C]
        t = window_partition(t, splits).reshape(batch, num_maps, splits * splits, tokens, channels)
        return t.transpose(1, 2).reshape(batch, splits * splits, num_maps * tokens, channels)

    # Deviation: the original tiles the mask in a token order that differs from its keys' when
    # M > 1 (more than 2 views); here every key gets its own window position's bias.
    bias = None if mask is None else mask.repeat(1, 1, num_maps).to(query.dtype)
    # Deviation: fused attention kernel instead of explicit scores (same maths, less memory).
    attended = F.scaled_dot_product_attention(query, gather_maps(key), gather_maps(value), attn_mask=bias)
    attended = window_merge(attended, height, width)
    if mask is not None:
        attended = torch.roll(attended, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    return attended.reshape(batch, height * width, channels)


class TransformerLayer(nn.Module):
    """Windowed attention with a post-norm residual, optionally followed by an MLP.

    Computes ``source + norm1(merge(attn(q(source), k(target), v(target))))``; with an MLP the
    residual branch is ``norm2(mlp([source, norm1(...)]))`` instead.
    """

    def __init__(self, channels: int, ffn_expansion: int = 4, with_mlp: bool = True) -> None:
        super().__init__()
        self.q_proj = nn.Linear(channels, channels, bias=False)
        self.k_proj = nn.Linear(channels, channels, bias=False)
        self.v_proj = nn.Linear(channels, channels, bias=False)
        self.merge = nn.Linear(channels, channels, bias=False)
        self.norm1 = nn.LayerNorm(channels)
        self.mlp = None
        if with_mlp:
            hidden = 2 * channels * ffn_expansion
            self.mlp = nn.Sequential(
                nn.Linear(2 * channels, hidden, bias=False), nn.GELU(), nn.Linear(hidden, channels, bias=False)
            )
            self.norm2 = nn.LayerNorm(channels)

    def forward(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        height: int,
        width: int,
        splits: int,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """source [N, H*W, C], target [N, M, H*W, C] → [N, H*W, C]."""
        message = window_attention(
            self.q_proj(source), self.k_proj(target), self.v_proj(target), height, width, splits, mask
        )
        message = self.norm1(self.merge(message))
        if self.mlp is not None:
            message = self.norm2(self.mlp(torch.cat([source, message], dim=-1)))
        return source + message


class TransformerBlock(nn.Module):
    """Self-attention within each view, then cross-attention to the other views and an MLP."""

    def __init__(self, channels: int, ffn_expansion: int = 4) -> None:
        super().__init__()
        self.self_attn = TransformerLayer(channels, ffn_expansion, with_mlp=False)
        self.cross_attn_ffn = TransformerLayer(channels, ffn_expansion, with_mlp=True)


class MultiViewTransformer(nn.Module):
    """Stack of :class:`TransformerBlock`; odd blocks use shifted windows."""

    def __init__(self, num_layers: int = 6, channels: int = 128, ffn_expansion: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(channels, ffn_expansion) for _ in range(num_layers))

    def forward(self, features: torch.Tensor, splits: int) -> torch.Tensor:
        """[B, V, C, h, w] → [B, V, C, h, w]; h and w must be multiples of ``splits``."""
        batch, views, channels, height, width = features.shape
        if views < 2:
            raise ValueError(f"the multi-view transformer needs at least 2 views, got {views}.")
        if height % splits or width % splits:
            raise ValueError(f"feature height and width must be multiples of {splits}, got {(height, width)}.")
        mask = shifted_window_mask(height, width, splits, features.device)
        # For view i, the other views in increasing order. [V, V-1]
        others = torch.tensor([[j for j in range(views) if j != i] for i in range(views)], device=features.device)
        tokens = features.flatten(3).transpose(2, 3)  # [B, V, h*w, C]
        for index, block in enumerate(self.layers):
            layer_mask = mask if index % 2 == 1 else None
            flat = tokens.reshape(batch * views, height * width, channels)
            attended = block.self_attn(flat, flat[:, None], height, width, splits, layer_mask)
            # Cross-attention reads the other views as they were before this block.
            target = tokens[:, others].reshape(batch * views, views - 1, height * width, channels)
            attended = block.cross_attn_ffn(attended, target, height, width, splits, layer_mask)
            tokens = attended.reshape(batch, views, height * width, channels)
        return tokens.transpose(2, 3).reshape(batch, views, channels, height, width)


class MultiViewBackbone(nn.Module):
    """CNN features + per-window position embedding + multi-view transformer.

    Args:
        feature_channels: channels of the 1/4-resolution features.
        num_transformer_layers: transformer blocks.
        ffn_expansion: MLP width factor (applied to 2 x channels).
        attention_splits: windows per side.
    """

    def __init__(
        self,
        feature_channels: int = 128,
        num_transformer_layers: int = 6,
        ffn_expansion: int = 4,
        attention_splits: int = 2,
    ) -> None:
        super().__init__()
        self.feature_channels = feature_channels
        self.attention_splits = attention_splits
        self.backbone = CNNEncoder(feature_channels)
        self.transformer = MultiViewTransformer(num_transformer_layers, feature_channels, ffn_expansion)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the context views.

        Args:
            images: context images in [0, 1]. [B, V, 3, H, W]

        Returns:
            transformer features. [B, V, C, H/4, W/4]
            CNN features (before position embedding and transformer). [B, V, C, H/4, W/4]
        """
        batch, views = images.shape[:2]
        pixel_values = (images.flatten(0, 1) - self.pixel_mean) / self.pixel_std
        cnn_features = self.backbone(pixel_values)
        height, width = cnn_features.shape[-2:]
        splits = self.attention_splits
        # The embedding is computed for one window and repeated over the splits x splits windows.
        position = sine_position_embedding(height // splits, width // splits, self.feature_channels, images.device)
        embedded = cnn_features + position.repeat(1, splits, splits)
        cnn_features = cnn_features.reshape(batch, views, *cnn_features.shape[1:])
        features = self.transformer(embedded.reshape_as(cnn_features), splits)
        return features, cnn_features
