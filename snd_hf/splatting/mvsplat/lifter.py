"""MVSplat as an SnD lifter: context views → one 3D Gaussian per context pixel.

Usage::

    from snd_hf.cameras import Cameras
    from snd_hf.splatting import MVSplatLifter

    lifter = MVSplatLifter.from_checkpoint("checkpoints/re10k.ckpt")  # frozen, eval mode
    context = batch["context"]
    gaussians = lifter(context["image"], Cameras.from_views(context))  # G = V * H * W, ordered b (v h w)

The encoder is MVSplat's cost-volume encoder as SnD configures it for ScanNet++ (the RealEstate10K
architecture): UniMatch CNN at 1/4 resolution, 6-block cross-view Swin transformer, 128
plane-sweep candidates uniform in inverse depth, cost-volume and depth-refinement U-Nets with
cross-view attention, and the Gaussian adapter, one Gaussian per pixel.

Any image size works: the encoder itself needs heights and widths in multiples of
``config.size_multiple`` (16), so other sizes run through it resized (bilinear, antialiased) to the
nearest such size, and its per-pixel outputs (depth, density, raw Gaussian parameters) are
resampled back (nearest, pixel centres aligned). The Gaussians are then built on the input's own
pixel grid: still one per input pixel, on that pixel's ray, sized by its footprint. Normalised
intrinsics hold for every resolution of a view, so the cameras need no change. At multiples of 16
(SnD's 576x880) nothing is resized and the encoder runs exactly as the original.

Near and far come from the context cameras. Note: SnD's ScanNet++ setting uses near 1, far 100 (the
trainer's default, not the lifter's), which clips metric indoor depths below 1 m.

Checkpoint keys: a Lightning checkpoint of MVSplat (``re10k.ckpt``) or SnD stores the encoder
under ``state_dict["encoder.<key>"]``. The conversion keeps the ``encoder.*`` entries and strips
the prefix; every remaining name is identical to ours (the module tree mirrors the original), so
the mapping is the identity. Everything else in the checkpoint (decoder, optimiser, loops) is
ignored. The load is strict: missing, unexpected or misshaped keys raise one error naming them.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ...loading import CheckpointError, read_checkpoint_file
from ...cameras import Cameras
from ..gaussians import Gaussians
from ..lifters import Lifter, check_lifter_inputs
from .backbone import MultiViewBackbone
from .depth_predictor import CostVolumeDepthPredictor, DepthPrediction
from .gaussian_adapter import pixel_gaussians

CHECKPOINT_PREFIX = "encoder."


@dataclass
class MVSplatConfig:
    """Hyperparameters of the MVSplat encoder (defaults: SnD's ScanNet++ / MVSplat's re10k setting).

    The CNN always works at 1/4 resolution (MVSplat's ``downscale_factor`` 4).
    """

    feature_channels: int = 128
    num_depth_candidates: int = 128
    num_transformer_layers: int = 6
    ffn_expansion: int = 4
    attention_splits: int = 2
    costvolume_unet_channels: int = 128
    costvolume_unet_channel_mult: tuple[int, ...] = (1, 1, 1)
    costvolume_unet_attention_resolutions: tuple[int, ...] = (4,)
    depth_unet_channels: int = 32
    depth_unet_channel_mult: tuple[int, ...] = (1, 1, 1, 1, 1)
    depth_unet_attention_resolutions: tuple[int, ...] = (16,)
    head_channels: int = 32
    gaussian_scale_min: float = 0.5
    gaussian_scale_max: float = 15.0
    # Only sets the width of the checkpoint's Gaussian head: 2 + 7 + 3 (sh_degree + 1)².
    sh_degree: int = 4
    downscale_factor: int = field(default=4, init=False)

    @property
    def size_multiple(self) -> int:
        """The encoder runs on heights and widths that are multiples of this (other sizes are resized)."""
        feature_multiple = max(2 ** (len(self.costvolume_unet_channel_mult) - 1), self.attention_splits)
        return max(self.downscale_factor * feature_multiple, 2 ** (len(self.depth_unet_channel_mult) - 1))

    def encoder_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the encoder runs at for an ``height x width`` input: each side rounded to the
        nearest multiple of :attr:`size_multiple` (at least one multiple)."""
        multiple = self.size_multiple
        return tuple(max(multiple, round(side / multiple) * multiple) for side in (height, width))


@dataclass
class MVSplatOutput:
    """Everything the lifter predicts for the context views.

    Attributes:
        gaussians: world-space Gaussians, G = V * H * W ordered b (v h w), no features yet.
        depths: predicted depth of each pixel, along its ray (see module docs). [B, V, H, W]
        camera_scales: camera-frame standard deviations. [B, G, 3]
        camera_rotations: camera-frame unit quaternions (x, y, z, w). [B, G, 4]
    """

    gaussians: Gaussians
    depths: torch.Tensor
    camera_scales: torch.Tensor
    camera_rotations: torch.Tensor


class MVSplatLifter(Lifter):
    """MVSplat cost-volume encoder producing one Gaussian per context pixel.

    Frozen by default (eval mode, no gradients); pass ``frozen=False`` to fine-tune.
    """

    def __init__(self, config: MVSplatConfig | None = None, frozen: bool = True) -> None:
        super().__init__()
        self.config = config = config or MVSplatConfig()
        self.backbone = MultiViewBackbone(
            config.feature_channels, config.num_transformer_layers, config.ffn_expansion, config.attention_splits
        )
        self.depth_predictor = CostVolumeDepthPredictor(
            feature_channels=config.feature_channels,
            num_depth_candidates=config.num_depth_candidates,
            upscale_factor=config.downscale_factor,
            costvolume_unet_channels=config.costvolume_unet_channels,
            costvolume_unet_channel_mult=config.costvolume_unet_channel_mult,
            costvolume_unet_attention_resolutions=config.costvolume_unet_attention_resolutions,
            depth_unet_channels=config.depth_unet_channels,
            depth_unet_channel_mult=config.depth_unet_channel_mult,
            depth_unet_attention_resolutions=config.depth_unet_attention_resolutions,
            head_channels=config.head_channels,
            gaussian_raw_channels=2 + 7 + 3 * (config.sh_degree + 1) ** 2,
        )
        if frozen:
            self.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: MVSplatConfig | None = None,
        frozen: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> MVSplatLifter:
        """Build the lifter and load MVSplat weights strictly.

        Args:
            path: a Lightning checkpoint (``re10k.ckpt``: ``{"state_dict": {"encoder.<key>": ...}}``),
                a ``.pth`` holding such a dict or a bare encoder state dict, or a ``.safetensors``
                file with the same keys (with or without the ``encoder.`` prefix).
            config: architecture; the default is MVSplat's re10k / SnD's ScanNet++ encoder.
            frozen: eval mode and ``requires_grad=False``.
            map_location: device to load the tensors to.
        """
        lifter = cls(config, frozen=False)
        lifter.load_state_dict(convert_checkpoint(load_checkpoint_state_dict(path, map_location)), strict=True)
        lifter.to(map_location)
        if frozen:
            lifter.eval().requires_grad_(False)
        return lifter

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Like :meth:`torch.nn.Module.load_state_dict`, but a strict load raises one ``ValueError``
        listing every missing, unexpected and misshaped key."""
        if strict:
            expected = self.state_dict()
            missing = sorted(set(expected) - set(state_dict))
            unexpected = sorted(set(state_dict) - set(expected))
            misshaped = sorted(
                f"{key}: expected {list(expected[key].shape)}, got {list(state_dict[key].shape)}"
                for key in set(expected) & set(state_dict)
                if expected[key].shape != state_dict[key].shape
            )
            if missing or unexpected or misshaped:
                raise ValueError(
                    "MVSplat state dict does not match the architecture: "
                    f"missing keys {missing}, unexpected keys {unexpected}, misshaped keys {misshaped}."
                )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, images: torch.Tensor, cameras: Cameras, depth: torch.Tensor | None = None) -> Gaussians:
        """Lift the context views to Gaussians (see :meth:`predict`; MVSplat predicts depth, so ``depth`` is unused)."""
        return self.predict(images, cameras).gaussians

    def predict(self, images: torch.Tensor, cameras: Cameras) -> MVSplatOutput:
        """Run the encoder.

        Args:
            images: context images in [0, 1] (the encoder normalises them itself). Any H and W (see
                the module docstring for sizes that are not multiples of ``config.size_multiple``);
                V >= 2. [B, V, 3, H, W]
            cameras: their cameras (c2w OpenCV, normalised intrinsics, near/far), with
                ``image_size == (H, W)``. [B, V]

        Returns:
            Gaussians plus depths and camera-frame scales/rotations (see :class:`MVSplatOutput`),
            one per input pixel.

        Raises:
            TypeError, ValueError: see :func:`~snd_hf.splatting.lifters.check_lifter_inputs`; fewer than 2 views.
        """
        batch, views, height, width = check_lifter_inputs(images, cameras)
        if views < 2:
            raise ValueError(f"MVSplat needs at least 2 context views, got {views}: `images` [B, V >= 2, 3, H, W].")
        extrinsics, intrinsics, near, far = cameras.extrinsics, cameras.intrinsics, cameras.near, cameras.far
        encoder_size = self.config.encoder_size(height, width)
        encoder_images = images
        if encoder_size != (height, width):
            encoder_images = F.interpolate(
                images.flatten(0, 1), size=encoder_size, mode="bilinear", align_corners=False, antialias=True
            ).unflatten(0, (batch, views))
        features, cnn_features = self.backbone(encoder_images)
        prediction = self.depth_predictor(features, cnn_features, encoder_images, intrinsics, extrinsics, near, far)
        if encoder_size != (height, width):
            prediction = _resample_prediction(prediction, (height, width))
        pixels = pixel_gaussians(
            prediction.depths,
            prediction.gaussian_params,
            extrinsics,
            intrinsics,
            self.config.gaussian_scale_min,
            self.config.gaussian_scale_max,
        )
        count = views * height * width
        # Deviation: the original maps density d to opacity 0.5 (1 - (1 - d)^e + d^(1/e)) with e
        # annealed over training steps; SnD's config fixes e = 2^0 = 1, the identity.
        gaussians = Gaussians(
            means=pixels.means.reshape(batch, count, 3),
            covariances=pixels.covariances.reshape(batch, count, 3, 3),
            opacities=prediction.densities.reshape(batch, count),
        )
        return MVSplatOutput(
            gaussians=gaussians,
            depths=prediction.depths,
            camera_scales=pixels.scales.reshape(batch, count, 3),
            camera_rotations=pixels.rotations.reshape(batch, count, 4),
        )


def _resample_prediction(prediction: DepthPrediction, size: tuple[int, int]) -> DepthPrediction:
    """Per-pixel predictions at another image size: each pixel takes the value of the encoder pixel
    under its centre (nearest, pixel centres aligned), so depths are never blended across edges."""

    def resample(values: torch.Tensor) -> torch.Tensor:  # [B, V, h, w, ...] -> [B, V, *size, ...]
        batch, views, height, width = values.shape[:4]
        channels = values.reshape(batch * views, height, width, -1).permute(0, 3, 1, 2)
        resampled = F.interpolate(channels, size=size, mode="nearest-exact").permute(0, 2, 3, 1)
        return resampled.reshape(batch, views, *size, *values.shape[4:])

    return DepthPrediction(
        depths=resample(prediction.depths),
        densities=resample(prediction.densities),
        gaussian_params=resample(prediction.gaussian_params),
    )


def load_checkpoint_state_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint file (``.safetensors``, or a torch pickle with ``weights_only=True``)."""
    try:
        loaded = read_checkpoint_file(path, map_location)
    except CheckpointError as error:
        if not isinstance(error.__cause__, pickle.UnpicklingError):
            raise
        raise CheckpointError(
            f"{error} snd-hf never unpickles arbitrary objects: extract the state dict of a Lightning "
            "checkpoint once, in an environment where you trust the file (torch.save({'state_dict': "
            "ckpt['state_dict']}, ...) or save it as .safetensors), and load that instead."
        ) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(loaded).__name__}).")
    return loaded


def convert_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original MVSplat/SnD keys → snd-hf keys: keep ``encoder.*`` and strip the prefix (the rest
    of each name is identical). A state dict without any ``encoder.`` key is taken as already bare."""
    if not any(key.startswith(CHECKPOINT_PREFIX) for key in state_dict):
        return dict(state_dict)
    return {
        key[len(CHECKPOINT_PREFIX) :]: value for key, value in state_dict.items() if key.startswith(CHECKPOINT_PREFIX)
    }
