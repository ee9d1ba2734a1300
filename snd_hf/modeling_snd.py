"""SnD student: the torch.hub DINOv2 ViT as a transformers model (one flat file, building blocks first).

The graph reproduces facebookresearch/dinov2 `DinoVisionTransformer` numerically, including its
position-embedding resize (bicubic with a scale factor from `interpolate_offset`, which transformers'
`Dinov2Model` drops, so its features differ off 518 px). The attention keeps the original fused `qkv`
projection because SnD trains one LoRA adapter on it. Parameter names are a contract with the loaders
(`snd_hf.loading`) and the Hub/trainer code: see `loading.ORIGINAL_TO_HF` for the mapping.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import HfApi
from torch import nn
from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import IMAGE_PROCESSOR_NAME, ModelOutput
from transformers.utils import logging as transformers_logging

from .configuration_snd import SnDConfig
from .files import atomic_write, default_permissions
from .hub import from_pretrained as hub_from_pretrained
from .image_processing_snd import SnDImageProcessor
from .model_card import model_card_of, written_by_snd_hf
from .loading.conversion import check_state_dict, convert_original_state_dict
from .loading.original import load_original_checkpoint, read_original_checkpoint
from .loading.sidecar import original_checkpoint_config


@dataclass
class SnDModelOutput(ModelOutput):
    """Outputs of `SnDModel`.

    Args:
        last_hidden_state: tokens after the final layer norm: CLS, the R = `num_register_tokens` registers,
            then the patches. # [B, 1 + R + h*w, C]
        pooler_output: the CLS token after the final layer norm. # [B, C]
        feature_map: the normed patch tokens as a map, h = H/14, w = W/14: the dense features SnD
            distils and evaluates. # [B, C, h, w]
        hidden_states: on request, the embeddings then each layer's output, before the final norm
            (`hidden_states[-1]` is the original's `x_prenorm`). tuple of L+1 # [B, 1 + R + h*w, C]
        attentions: on request, each layer's attention probabilities (computed with eager attention
            for that call whatever the attention implementation). tuple of L # [B, heads, N, N], N = 1 + R + h*w
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    feature_map: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class SnDPatchEmbeddings(nn.Module):
    """Non-overlapping patch projection (the original `PatchEmbed`)."""

    def __init__(self, config: SnDConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.num_patches = config.grid_size**2
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, H, W] -> patch tokens [B, h*w, C], row-major."""
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


_CUBIC_A = -0.75  # torch's bicubic coefficient without antialiasing (OpenCV's)


def _cubic_near(distance: torch.Tensor) -> torch.Tensor:
    """Cubic convolution weight at distance <= 1 (aten `cubic_convolution1`)."""
    return ((_CUBIC_A + 2) * distance - (_CUBIC_A + 3)) * distance * distance + 1


def _cubic_far(distance: torch.Tensor) -> torch.Tensor:
    """Cubic convolution weight at distance in (1, 2) (aten `cubic_convolution2`)."""
    return ((_CUBIC_A * distance - 5 * _CUBIC_A) * distance + 8 * _CUBIC_A) * distance - 4 * _CUBIC_A


def _cubic_taps(
    size: int | torch.SymInt | torch.Tensor, grid: int, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows and weights of torch's bicubic kernel (align_corners=False, A = -0.75, border clamped).

    Output index i samples `scale * (i + 0.5) - 0.5` of the `grid`-long input, in float32 as the kernel
    (aten `HelperInterpCubic.compute_indices_weights` with `upsample_bicubic2d`'s cubic convolution).

    Args:
        size: number of outputs (an int, or a symbolic/traced size).
        grid: number of inputs.
        scale: input step per output step, float32. # []
    Returns:
        (indices [size, 4] int64 in [0, grid), weights [size, 4] float32).
    """
    source = scale * (torch.arange(size, dtype=torch.float32, device=scale.device) + 0.5) - 0.5
    floor = source.floor().clamp_max(grid - 1)
    t = (source - floor).clamp(0.0, 1.0)
    weights = torch.stack([_cubic_far(t + 1.0), _cubic_near(t), _cubic_near(1.0 - t), _cubic_far((1.0 - t) + 1.0)], -1)
    indices = (floor.long()[:, None] + torch.arange(-1, 3, device=scale.device)).clamp(0, grid - 1)
    return indices, weights


def _bicubic_resize_traceable(
    patch_position: torch.Tensor,
    new_height: int | torch.SymInt | torch.Tensor,
    new_width: int | torch.SymInt | torch.Tensor,
    offset: float,
) -> torch.Tensor:
    """The original position-embedding resize from tensor ops only, for symbolic sizes.

    Same sampling grid as `F.interpolate(scale_factor=(n + offset) / grid, mode="bicubic")` (offset 0:
    `size=(n_h, n_w)`), and the same 4x4 taps summed in the kernel's order (4 along W, then along H), but
    every size-dependent number is a tensor, so `torch.export` keeps H and W dynamic and `torch.jit.trace`
    generalises. A square `grid` x `grid` request keeps the grid unchanged, as the eager shortcut does
    (scale 1 makes the weights exactly (0, 1, 0, 0)). Float32 rounding differs from the compiled kernel's
    (which fuses some multiply-adds): measured max |difference| 1e-5 on unit-variance grids.

    Args:
        patch_position: the square position-embedding grid, float32. # [1, C, grid, grid]
        new_height, new_width: the patch grid to resize to (ints, SymInts or 0-dim traced tensors).
        offset: `interpolate_offset`.
    Returns:
        the resized grid. # [1, C, new_height, new_width]
    """
    grid = patch_position.shape[-1]
    device = patch_position.device
    # The sizes as float64 tensors (n = last index + 1): exact, and traced rather than frozen.
    sizes = [torch.arange(size, dtype=torch.float64, device=device)[-1] + 1 for size in (new_height, new_width)]
    if offset:
        # The kernel receives the Python scale factor (n + offset) / grid and samples with float32(1 / factor).
        scales = [(1.0 / ((size + offset) / grid)).float() for size in sizes]
    else:
        scales = [torch.tensor(float(grid), dtype=torch.float32, device=device) / size.float() for size in sizes]
    unchanged = (sizes[0] == grid) & (sizes[1] == grid)
    scales = [torch.where(unchanged, torch.ones_like(scale), scale) for scale in scales]
    (rows, row_weights), (columns, column_weights) = (
        _cubic_taps(size, grid, scale) for size, scale in zip((new_height, new_width), scales)
    )
    gathered = patch_position[..., columns]  # [1, C, grid, n_w, 4]
    along_width = gathered[..., 0] * column_weights[:, 0]
    for tap in range(1, 4):
        along_width = along_width + gathered[..., tap] * column_weights[:, tap]
    gathered = along_width[:, :, rows]  # [1, C, n_h, 4, n_w]
    resized = gathered[:, :, :, 0] * row_weights[:, 0, None]
    for tap in range(1, 4):
        resized = resized + gathered[:, :, :, tap] * row_weights[:, tap, None]
    return resized


class SnDEmbeddings(nn.Module):
    """CLS token, optional mask tokens, patch embeddings, resized position embeddings and register tokens."""

    def __init__(self, config: SnDConfig) -> None:
        super().__init__()
        # Registration order gives the original state-dict order: cls_token, pos_embed, register_tokens,
        # mask_token, patch_embed.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + config.grid_size**2, config.hidden_size))
        if config.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, config.hidden_size))
        self.patch_embeddings = SnDPatchEmbeddings(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.patch_size = config.patch_size
        self.interpolate_offset = config.interpolate_offset
        self.interpolate_antialias = config.interpolate_antialias

    def interpolate_pos_encoding(
        self,
        embeddings: torch.Tensor,
        height: int | torch.SymInt | torch.Tensor,
        width: int | torch.SymInt | torch.Tensor,
    ) -> torch.Tensor:
        """Position embeddings for an input of `height` x `width` pixels, exactly as torch.hub DINOv2.

        The 37x37 grid is resized bicubically with `scale_factor = (grid + offset) / 37` (offset 0.1 by
        default; see facebookresearch/dinov2 issue #136 on why), in float32, then cast to the tokens' dtype;
        at the training size (a square `grid` x `grid` patch input) the grid is used as it is.

        With concrete sizes this calls torch's bicubic kernel as the original does (bit-identical). With
        symbolic sizes (`torch.export`/`torch.compile` with dynamic H, W, or `torch.jit.trace`) the kernel's
        float scale would be frozen into the graph at the example's size, so the resize is built from tensor
        ops instead (`_bicubic_resize_traceable`, equal to the kernel up to float32 rounding).

        Args:
            embeddings: the tokens the embeddings are added to. # [B, 1 + h*w, C]
            height, width: the input size in pixels (multiples of the patch size).
        Returns:
            position embeddings. # [1, 1 + h*w, C]
        """
        num_positions = self.position_embeddings.shape[1] - 1
        grid = math.isqrt(num_positions)
        assert grid * grid == num_positions, "position embeddings must form a square grid"
        new_height, new_width = height // self.patch_size, width // self.patch_size
        dim = embeddings.shape[-1]
        symbolic = torch.jit.is_tracing() or not (isinstance(height, int) and isinstance(width, int))
        if not symbolic and new_height == new_width == grid:
            return self.position_embeddings.to(embeddings.dtype)
        position_embeddings = self.position_embeddings.float()
        class_position = position_embeddings[:, :1]
        patch_position = position_embeddings[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        if symbolic and not self.interpolate_antialias:
            patch_position = _bicubic_resize_traceable(patch_position, new_height, new_width, self.interpolate_offset)
        elif symbolic and self.interpolate_offset:
            raise ValueError(
                "interpolate_antialias=True with a non-zero interpolate_offset cannot be traced or exported with"
                " dynamic sizes (torch's antialiased kernel would freeze the example's scale); export at a fixed size"
            )
        else:
            if self.interpolate_offset:
                scale = ((new_height + self.interpolate_offset) / grid, (new_width + self.interpolate_offset) / grid)
                resize = {"scale_factor": scale}
            else:
                resize = {"size": (new_height, new_width)}
            patch_position = nn.functional.interpolate(
                patch_position, mode="bicubic", antialias=self.interpolate_antialias, **resize
            )
            if not symbolic and tuple(patch_position.shape[-2:]) != (new_height, new_width):
                raise ValueError(
                    f"position embeddings resized to {tuple(patch_position.shape[-2:])}, expected"
                    f" {(new_height, new_width)} (interpolate_offset={self.interpolate_offset} is too small for"
                    " this grid)"
                )
        patch_position = patch_position.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_position, patch_position), dim=1).to(embeddings.dtype)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values [B, 3, H, W], bool_masked_pos [B, h*w] (True = replace by the mask token) -> [B, 1 + R + h*w, C].

        Registers get no position embedding: they go in after it is added, between CLS and the patches
        (dinov2 `prepare_tokens_with_masks`, transformers' `Dinov2WithRegistersEmbeddings`)."""
        _, _, height, width = pixel_values.shape
        embeddings = self.patch_embeddings(pixel_values)
        if bool_masked_pos is not None:
            mask_token = self.mask_token.to(embeddings.dtype).unsqueeze(0)
            embeddings = torch.where(bool_masked_pos.unsqueeze(-1), mask_token, embeddings)
        cls_tokens = self.cls_token.to(embeddings.dtype).expand(embeddings.shape[0], -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)
        embeddings = embeddings + self.interpolate_pos_encoding(embeddings, height, width)
        if hasattr(self, "register_tokens"):
            registers = self.register_tokens.to(embeddings.dtype).expand(embeddings.shape[0], -1, -1)
            embeddings = torch.cat((embeddings[:, :1], registers, embeddings[:, 1:]), dim=1)
        return self.dropout(embeddings)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention. query/key/value [B, heads, N, d] -> ([B, N, heads, d], probs [B, heads, N, N])."""
    attn_weights = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class SnDAttention(nn.Module):
    """Multi-head self-attention with the original fused `qkv` projection (one LoRA target in SnD)."""

    def __init__(self, config: SnDConfig) -> None:
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [B, N, C] -> (output [B, N, C], attention probs [B, heads, N, N] or None).

        `output_attentions` runs eager attention for this call: the fused kernels (SDPA, flash) never
        materialise the probabilities, and transformers' convention is that a model returns them when asked.
        """
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_size, seq_len, 3, self.num_attention_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, d]
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
        )
        attn_output = attn_output.reshape(batch_size, seq_len, -1)
        return self.proj_dropout(self.proj(attn_output)), attn_weights


class SnDLayerScale(nn.Module):
    """Per-channel residual scale (the original `LayerScale`, `gamma` there)."""

    def __init__(self, config: SnDConfig) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(config.layerscale_value * torch.ones(config.hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.lambda1


class SnDMLP(nn.Module):
    """fc1 -> activation -> fc2 (the original `Mlp`)."""

    def __init__(self, config: SnDConfig) -> None:
        super().__init__()
        hidden_features = int(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, hidden_features)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden_features, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.activation_fn(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden_states))


class SnDSwiGLUFFN(nn.Module):
    """SwiGLU feed-forward with the original fused `w12` input and `w3` output projections (`SwiGLUFFNFused`)."""

    def __init__(self, config: SnDConfig) -> None:
        super().__init__()
        hidden_features = int(config.hidden_size * config.mlp_ratio)
        hidden_features = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(config.hidden_size, 2 * hidden_features)
        self.w3 = nn.Linear(hidden_features, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(hidden_states).chunk(2, dim=-1)
        return self.w3(nn.functional.silu(gate) * value)


class SnDDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * keep / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class SnDLayer(GradientCheckpointingLayer):
    """One pre-norm transformer block (the original `NestedTensorBlock` / `Block`)."""

    def __init__(self, config: SnDConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = SnDAttention(config)
        self.layer_scale1 = SnDLayerScale(config)
        self.drop_path = SnDDropPath(config.drop_path_rate) if config.drop_path_rate > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SnDSwiGLUFFN(config) if config.use_swiglu_ffn else SnDMLP(config)
        self.layer_scale2 = SnDLayerScale(config)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [B, N, C] -> (hidden_states [B, N, C], attention probs [B, heads, N, N] or None)."""
        attn_output, attn_weights = self.attention(self.norm1(hidden_states), output_attentions)
        hidden_states = hidden_states + self.drop_path(self.layer_scale1(attn_output))
        hidden_states = hidden_states + self.drop_path(self.layer_scale2(self.mlp(self.norm2(hidden_states))))
        return hidden_states, attn_weights


class SnDEncoder(nn.Module):
    """The stack of `SnDLayer`s, optionally collecting every hidden state and attention map."""

    def __init__(self, config: SnDConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([SnDLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(
        self, hidden_states: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """hidden_states [B, N, C] -> (last [B, N, C], L+1 hidden states or None, L attention maps or None)."""
        all_hidden_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for layer in self.layer:
            hidden_states, attn_weights = layer(hidden_states, output_attentions)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            if output_attentions:
                all_attentions.append(attn_weights)
        return (
            hidden_states,
            tuple(all_hidden_states) if output_hidden_states else None,
            tuple(all_attentions) if output_attentions else None,
        )


# transformers' per-load and per-save bars: a model this small loads in a blink, and each bar is
# two lines of noise in a log. Download bars (huggingface_hub's) stay.
_WEIGHT_BARS = ("Loading weights", "Writing model shards")


@contextmanager
def _without_weight_bars() -> Iterator[None]:
    """Switch off transformers' weight loading/writing progress bars (only those) for the block."""
    def hook(factory, args, kwargs):
        if kwargs.get("desc") in _WEIGHT_BARS:
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    previous = transformers_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous)


class SnDPreTrainedModel(PreTrainedModel):
    """Weight initialisation and capabilities shared by `SnDModel` and `SnDBackbone`."""

    config_class = SnDConfig
    config: SnDConfig
    base_model_prefix = "snd"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SnDEmbeddings", "SnDLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-normal linear/conv weights and tokens (std `initializer_range`), zero biases and mask
        token, unit layer norms, layer scales at `layerscale_value`."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SnDEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            init.zeros_(module.mask_token)
            if hasattr(module, "register_tokens"):
                init.normal_(module.register_tokens, mean=0.0, std=1e-6)  # the original's init
        elif isinstance(module, SnDLayerScale):
            init.constant_(module.lambda1, self.config.layerscale_value)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        *model_args,
        size: str | None = None,
        blending: bool | None = None,
        **kwargs,
    ) -> SnDPreTrainedModel:
        """Load from a Hub repo id or a local folder: native checkpoints (`config.json` + weights), the
        published original-layout repo (`SnDModel.from_pretrained("david-shavin/SnD", size="base",
        blending=False)`) or a native repo with one subfolder per variant; `size`/`blending` pick the
        variant (defaults "small", True). Other arguments are transformers' `from_pretrained` ones.
        See `snd_hf.hub`."""
        with _without_weight_bars():
            if pretrained_model_name_or_path is None:
                return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
            return hub_from_pretrained(
                cls, super().from_pretrained, pretrained_model_name_or_path, *model_args, size=size, blending=blending, **kwargs
            )

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs) -> None:
        """transformers' `save_pretrained`, plus the files that make the folder a complete SnD checkpoint.

        - the default `SnDImageProcessor`'s `preprocessor_config.json` when the folder has none, so that
          `AutoImageProcessor` and `pipeline("image-feature-extraction")` work on every checkpoint saved
          or pushed (a processor config already in the folder is kept);
        - its model card, `README.md` (`snd_hf.model_card`: variant, initialisation, training, how to
          load), unless the folder holds a README.md the package did not write;
        - the written files get the permissions of a plain create (transformers leaves 0600).

        With `push_to_hub=True` the folder is saved first, then pushed with `push_to_hub` (transformers
        would upload only the files it wrote itself)."""
        push_to_hub = kwargs.pop("push_to_hub", False)
        hub_options = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "create_pr", "private") if key in kwargs}
        with _without_weight_bars():
            super().save_pretrained(save_directory, is_main_process, **kwargs)
        if self.should_save_on_this_rank(is_main_process):
            folder = Path(save_directory)
            if not (folder / IMAGE_PROCESSOR_NAME).exists():
                SnDImageProcessor().save_pretrained(folder)
            self._write_model_card(folder)
            for path in [folder / "config.json", folder / IMAGE_PROCESSOR_NAME, *folder.glob("model*.safetensors*")]:
                default_permissions(path)
            if push_to_hub:
                repo_id = hub_options.pop("repo_id", folder.name)
                self.push_to_hub(repo_id, token=kwargs.get("token"), **hub_options)

    def _write_model_card(self, folder: Path, repo_id: str | None = None) -> None:
        path = folder / "README.md"
        if path.exists() and not written_by_snd_hf(path.read_text(errors="replace")):
            return
        card = model_card_of(self.config, repo_id)
        atomic_write(path, lambda temporary: Path(temporary).write_text(card))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
    ):
        """transformers' `push_to_hub` with the package's model card as README.md (transformers would
        upload its generic card, or keep the repository's): the checkpoint is saved into a temporary
        folder by `save_pretrained` and uploaded as one commit. Returns the commit's `CommitInfo`.

        Args:
            repo_id: the Hub repository (created if missing).
            tags: extra Hub tags, added to the card's.
            others: as transformers' `PushToHubMixin.push_to_hub`.
        """
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as work_dir:
            folder = Path(work_dir)
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            (folder / "README.md").write_text(model_card_of(self.config, repo_id, tags or ()))
            return api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message or "Upload SnD model",
                commit_description=commit_description, revision=revision, create_pr=create_pr,
            )  # fmt: skip

    @classmethod
    def from_original_checkpoint(
        cls,
        path: str | os.PathLike,
        lora_alpha: float | None = None,
        use_rslora: bool = False,
        lora_config: object = None,
        **config_overrides,
    ) -> SnDPreTrainedModel:
        """Build the model from an original torch.hub DINOv2 / SnD checkpoint (.pth or .safetensors), also
        with registers, or from timm's (FiT3D's checkpoints) or transformers' DINOv2 layouts, with or without
        registers.

        The architecture comes from the checkpoint's `.json` sidecar when snd-hf wrote one, else from the
        tensor shapes and the layout (`snd_hf.loading.original_checkpoint_config`): register, timm and
        transformers layouts resize position embeddings as their own forward does
        (`snd_hf.loading.LAYOUT_CONFIG_DEFAULTS`). `config_overrides` set what shapes cannot tell (`num_attention_heads`
        when heads are not 64 wide, `size`, `blending`, the resize fields, ...). Weights load strictly;
        unmerged LoRA needs `lora_alpha` (+ `use_rslora`) or `lora_config` (see
        `snd_hf.loading.read_original_checkpoint`).
        """
        checkpoint = read_original_checkpoint(path, lora_alpha=lora_alpha, use_rslora=use_rslora, lora_config=lora_config)
        state_dict = checkpoint.state_dict
        config = original_checkpoint_config(path, state_dict, checkpoint.config_defaults, **config_overrides)
        hf_state_dict = convert_original_state_dict(state_dict, config)
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(hf_state_dict, strict=True, assign=True)
        return model.eval()

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Raise a ValueError saying how to fix `pixel_values` that the model cannot take."""
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must have shape [B, {self.config.num_channels}, H, W], got {tuple(pixel_values.shape)}"
                " (add a batch dimension with pixel_values[None] for a single image)"
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a float tensor of normalised pixels, got dtype {pixel_values.dtype}"
                " (convert with SnDImageProcessor, or .float() / 255 then normalise with the ImageNet mean and std)"
            )
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have {self.config.num_channels} channels in dimension 1, got"
                f" {pixel_values.shape[1]} (shape {tuple(pixel_values.shape)}; images go channels-first [B, C, H, W])"
            )
        height, width = pixel_values.shape[-2:]
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(
                f"pixel_values height and width must be multiples of {patch}, got {height}x{width}: resize or pad"
                f" to a multiple of {patch}, e.g. with SnDImageProcessor (snap='resize' gives"
                f" {height // patch * patch}x{width // patch * patch})"
            )

    def _embed_and_encode(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None,
        output_hidden_states: bool,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """Validated embeddings then encoder: (pre-norm tokens [B, 1 + R + h*w, C], hidden states, attentions)."""
        self._check_pixel_values(pixel_values)
        embeddings = self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos)
        return self.encoder(embeddings, output_hidden_states=output_hidden_states, output_attentions=output_attentions)

    def _tokens_to_map(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Patch tokens (CLS and registers dropped) [B, 1 + R + h*w, C] of an H x W input -> map [B, C, h, w]."""
        patch = self.config.patch_size
        patch_tokens = tokens[:, 1 + self.config.num_register_tokens :]
        feature_map = patch_tokens.reshape(tokens.shape[0], height // patch, width // patch, tokens.shape[-1])
        return feature_map.permute(0, 3, 1, 2).contiguous()


class SnDModel(SnDPreTrainedModel):
    """The SnD (DINOv2) ViT: final-norm tokens, the CLS token and the dense patch feature map."""

    def __init__(self, config: SnDConfig) -> None:
        super().__init__(config)
        self.embeddings = SnDEmbeddings(config)
        self.encoder = SnDEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> SnDPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        **kwargs,
    ) -> SnDModelOutput | tuple[torch.Tensor, ...]:
        """Encode normalised images.

        Args:
            pixel_values: ImageNet-normalised images, H and W multiples of 14. # [B, 3, H, W]
            output_hidden_states: also return the L+1 pre-norm hidden states (default: config).
            output_attentions: also return each layer's attention probabilities, computed with eager attention
                for this call under any attention implementation (default: config).
            return_dict: return an `SnDModelOutput` (default) or a plain tuple.
            bool_masked_pos: patches to replace by the mask token (DINOv2/iBOT pre-training). # [B, h*w]
            kwargs: ignored; accepted because transformers' pipelines and task models forward extra options.
        Returns:
            `SnDModelOutput` with `last_hidden_state` [B, 1 + R + h*w, C], `pooler_output` [B, C],
            `feature_map` [B, C, h, w] and optionally `hidden_states` / `attentions`.
        """
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        return_dict = self.config.return_dict if return_dict is None else return_dict
        prenorm, hidden_states, attentions = self._embed_and_encode(
            pixel_values, bool_masked_pos, bool(output_hidden_states), bool(output_attentions)
        )
        last_hidden_state = self.layernorm(prenorm)
        output = SnDModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=last_hidden_state[:, 0],
            feature_map=self._tokens_to_map(last_hidden_state, *pixel_values.shape[-2:]),
            hidden_states=hidden_states,
            attentions=attentions,
        )
        return output if return_dict else output.to_tuple()

    def image_features(
        self,
        images: torch.Tensor,  # [N, 3, H, W]
        *,
        size: tuple[int, int] | None = None,
        antialias: bool = False,
        output_hidden_states: bool | None = None,
    ) -> SnDModelOutput:
        """Dense features of RGB images in [0, 1]: the package's one path from image tensors to features.

        The images are resized bilinearly to ``size``, by default each side down to a multiple of
        ``config.patch_size`` (576x880 -> 574x868, as SnD extracts its features; images already there are
        not resized), normalised with `SnDImageProcessor`'s mean and std (ImageNet) and encoded. Image files
        go through `SnDImageProcessor` and `forward` instead.

        Args:
            images: RGB in [0, 1]. [N, 3, H, W]
            size: ``(H', W')`` input size, multiples of ``config.patch_size``; None snaps down.
            antialias: antialiased resizing (the evaluation's; SnD's training resize is plain bilinear).
            output_hidden_states: also return the pre-norm hidden states (default: config).

        Returns:
            `SnDModelOutput` of the resized images; `feature_map` [N, C, H'/p, W'/p].

        Raises:
            ValueError: ``images`` are not [N, 3, H, W] or smaller than one patch.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        patch = self.config.patch_size
        size = (height // patch * patch, width // patch * patch) if size is None else tuple(size)
        if min(size) == 0:
            raise ValueError(f"images of {height}x{width} are smaller than one {patch}x{patch} patch")
        if size != (height, width):
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=antialias)
        mean = images.new_tensor(SnDImageProcessor.image_mean).view(1, 3, 1, 1)
        std = images.new_tensor(SnDImageProcessor.image_std).view(1, 3, 1, 1)
        return self(pixel_values=(images - mean) / std, output_hidden_states=output_hidden_states, return_dict=True)

    def get_intermediate_layers(
        self,
        pixel_values: torch.Tensor,
        n: int | list[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[torch.Tensor, ...] | tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Per-layer features as the original `get_intermediate_layers` returns them.

        Args:
            pixel_values: normalised images. # [B, 3, H, W]
            n: the last `n` layers (int) or these 0-based layer indices (list).
            reshape: patch tokens as maps [B, C, h, w] instead of [B, h*w, C].
            return_class_token: pair each layer's patch tokens with its CLS token [B, C].
            norm: apply the final layer norm to each layer's tokens.
        Returns:
            a tuple with one entry per selected layer, in layer order.
        """
        num_layers = self.config.num_hidden_layers
        layers = list(range(num_layers - n, num_layers)) if isinstance(n, int) else list(n)
        if not layers or any(not 0 <= index < num_layers for index in layers):
            raise ValueError(f"n must select layers in [0, {num_layers}), got {n}")
        _, hidden_states, _ = self._embed_and_encode(pixel_values, None, True, False)
        outputs = []
        for index in layers:
            tokens = hidden_states[index + 1]
            tokens = self.layernorm(tokens) if norm else tokens
            patches = (
                self._tokens_to_map(tokens, *pixel_values.shape[-2:])
                if reshape
                else tokens[:, 1 + self.config.num_register_tokens :]
            )
            outputs.append((patches, tokens[:, 0]) if return_class_token else patches)
        return tuple(outputs)


class SnDBackbone(BackboneMixin, SnDPreTrainedModel):
    """SnD as a transformers backbone (DPT, Depth Anything, UperNet, ...): feature maps of `out_features`.

    Same parameter names as `SnDModel`, so an SnD state dict loads into it unchanged
    (`snd_hf.load_backbone_weights` does it for a task model).
    """

    def __init__(self, config: SnDConfig) -> None:
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.embeddings = SnDEmbeddings(config)
        self.encoder = SnDEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> SnDPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        """Feature maps of the `out_features` stages.

        Args:
            pixel_values: normalised images, H and W multiples of 14. # [B, 3, H, W]
            output_hidden_states: also return the L+1 pre-norm hidden states (default: config).
            output_attentions: also return each layer's attention probabilities, computed with eager attention
                for this call under any attention implementation (default: config).
            return_dict: return a `BackboneOutput` (default) or a plain tuple.
            kwargs: ignored; accepted because transformers' task models forward extra options.
        Returns:
            `BackboneOutput.feature_maps`: per stage [B, C, h, w] when `reshape_hidden_states`, else the
            tokens [B, 1 + h*w, C]; final layer norm applied when `apply_layernorm`.
        """
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        return_dict = self.config.return_dict if return_dict is None else return_dict
        _, hidden_states, attentions = self._embed_and_encode(pixel_values, None, True, bool(output_attentions))
        feature_maps = []
        for stage, hidden_state in zip(self.stage_names, hidden_states):
            if stage not in self.out_features:
                continue
            if self.config.apply_layernorm:
                hidden_state = self.layernorm(hidden_state)
            if self.config.reshape_hidden_states:
                hidden_state = self._tokens_to_map(hidden_state, *pixel_values.shape[-2:])
            feature_maps.append(hidden_state)
        output = BackboneOutput(
            feature_maps=tuple(feature_maps),
            hidden_states=hidden_states if output_hidden_states else None,
            attentions=attentions,
        )
        return output if return_dict else output.to_tuple()


def load_backbone_weights(task_model: nn.Module, source: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike) -> nn.Module:
    """Put SnD weights into the `SnDBackbone` of a transformers task model, strictly.

    transformers builds backbones from `backbone_config` with random weights; this is the one call that
    fills them, e.g. `DPTForDepthEstimation(DPTConfig(backbone_config=SnDConfig.from_variant("small"), ...))`.

    Args:
        task_model: a model with an `SnDBackbone` at `.backbone` (DPT, Depth Anything, UperNet), or the
            `SnDBackbone` itself.
        source: an `SnDModel`/`SnDBackbone`, an snd-hf state dict, a native checkpoint directory, or an
            original-layout .pth/.safetensors file.
    Returns:
        the backbone, now holding the weights.
    Raises:
        CheckpointError: naming every missing, unexpected or misshaped weight.
    """
    backbone = task_model if isinstance(task_model, SnDBackbone) else getattr(task_model, "backbone", None)
    if not isinstance(backbone, SnDBackbone):
        raise TypeError(
            f"task_model must be an SnDBackbone or hold one at .backbone, got {type(task_model).__name__}"
            f" with backbone {type(backbone).__name__}"
        )
    if isinstance(source, nn.Module):
        state_dict = source.state_dict()
    elif isinstance(source, Mapping):
        state_dict = dict(source)
    elif Path(source).is_dir():
        state_dict = SnDModel.from_pretrained(source).state_dict()
    else:
        state_dict = convert_original_state_dict(load_original_checkpoint(source), backbone.config)
    check_state_dict(state_dict, {k: v.shape for k, v in backbone.state_dict().items()}, [], "SnD weights for the backbone")
    backbone.load_state_dict(state_dict, strict=True)
    return backbone


# Registered where the classes are defined, so that any import of the model (`import snd_hf` does it
# once transformers is imported, see snd_hf/__init__.py) lets AutoModel, AutoBackbone,
# AutoImageProcessor and pipeline() read model type "snd" without trust_remote_code.
AutoConfig.register(SnDConfig.model_type, SnDConfig, exist_ok=True)
AutoModel.register(SnDConfig, SnDModel, exist_ok=True)
AutoBackbone.register(SnDConfig, SnDBackbone, exist_ok=True)
AutoImageProcessor.register(SnDConfig, SnDImageProcessor, exist_ok=True)

__all__ = ["SnDBackbone", "SnDModel", "SnDModelOutput", "SnDPreTrainedModel", "load_backbone_weights"]
