"""SnD image processor: aspect-preserving resize, sizes snapped to the 14-pixel patch grid, ImageNet
normalisation. PIL/NumPy backend only (no torchvision needed)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack


class SnDImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    snap (`str`, *optional*, defaults to `"resize"`):
        How images are brought to multiples of `patch_size`: `"resize"` rounds both sides down and resizes
        (SnD's feature extraction: 576x880 -> 574x868), `"pad"` centre-pads the normalised image with zeros
        up to the next multiple (the FiT3D / timm probing evaluation), `None` leaves the size alone.
    patch_size (`int`, *optional*, defaults to 14):
        The multiple to snap to.
    """

    snap: Literal["resize", "pad"] | None
    patch_size: int


class SnDImageProcessor(PilBackend):
    """Prepares images for `SnDModel`: `pixel_values` [B, 3, H, W] with H and W multiples of 14.

    Default pipeline: convert to RGB, resize (bicubic) so the shortest edge is 448 keeping the aspect ratio,
    with both sides rounded down to multiples of 14 in the same resize (`snap="resize"`; `"pad"` instead
    centre-pads after normalisation), rescale to [0, 1], normalise with the ImageNet mean and std.
    `do_resize=False` keeps the input size and only snaps (576x880 -> 574x868, as SnD extracts features);
    `size={"height": H, "width": W}` resizes to a fixed size.
    """

    valid_kwargs = SnDImageProcessorKwargs

    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 448}
    default_to_square = False
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    snap = "resize"
    patch_size = 14

    def __init__(self, **kwargs: Unpack[SnDImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)
        self._check_snap(self.snap, self.patch_size)

    @staticmethod
    def _check_snap(snap: str | None, patch_size: int) -> None:
        if snap not in ("resize", "pad", None):
            raise ValueError(f"snap must be 'resize', 'pad' or None, got {snap!r}")
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")

    def _output_size(
        self, image: np.ndarray, do_resize: bool, size: SizeDict, snap: str | None, patch_size: int
    ) -> tuple[int, int]:
        """(height, width) after the optional resize and the `snap="resize"` rounding, for a [3, H, W] image."""
        height, width = image.shape[-2:]
        if do_resize and size.shortest_edge:
            height, width = get_resize_output_image_size(
                image, size.shortest_edge, default_to_square=False, input_data_format=ChannelDimension.FIRST
            )
        elif do_resize:
            height, width = size.height, size.width
        if snap == "resize":
            if height < patch_size or width < patch_size:
                raise ValueError(f"image of {height}x{width} is smaller than one {patch_size}x{patch_size} patch")
            height, width = height // patch_size * patch_size, width // patch_size * patch_size
        return height, width

    @staticmethod
    def _pad_centre(image: np.ndarray, patch_size: int) -> np.ndarray:
        """Zero-pad a [3, H, W] image symmetrically (extra pixel at the end) to multiples of `patch_size`."""
        height, width = image.shape[-2:]
        pad_height, pad_width = -height % patch_size, -width % patch_size
        padding = ((0, 0), (pad_height // 2, pad_height - pad_height // 2), (pad_width // 2, pad_width - pad_width // 2))
        return np.pad(image, padding, mode="constant", constant_values=0)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | None,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...] | None,
        image_std: float | tuple[float, ...] | None,
        return_tensors: str | None,
        snap: Literal["resize", "pad"] | None = "resize",
        patch_size: int = 14,
        **kwargs,
    ) -> BatchFeature:
        """Resize, snap, rescale, normalise (and pad) each [3, H, W] image; see the class docstring."""
        self._check_snap(snap, patch_size)
        processed = []
        for image in images:
            # Deviation: one resize straight to the snapped size (SnD resized with PIL, then bilinearly in torch).
            height, width = self._output_size(image, do_resize, size, snap, patch_size)
            if (height, width) != image.shape[-2:]:
                image = self.resize(image, size=SizeDict(height=height, width=width), resample=resample)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            if snap == "pad":
                image = self._pad_centre(image, patch_size)
            processed.append(image.astype(np.float32))
        if return_tensors is not None and len({image.shape for image in processed}) > 1:
            shapes = sorted({image.shape[-2:] for image in processed})
            raise ValueError(
                f"images of different sizes {shapes} cannot be stacked into one tensor: pass them one at a time,"
                " or use size={'height': H, 'width': W} to give them one size"
            )
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)


__all__ = ["SnDImageProcessor"]
