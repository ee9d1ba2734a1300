"""SnD image processor: aspect-preserving resize, sizes snapped to the 14-pixel patch grid, ImageNet
normalisation. PIL/NumPy backend only (no torchvision needed); decoding by :mod:`snd_hf.images`."""

from __future__ import annotations

import functools
import io
import os
import warnings
from typing import Any, Literal

import numpy as np
import torch
from huggingface_hub.utils import httpx
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_processing_base import IMAGE_PROCESSOR_NAME
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack

from .images import MAX_PIXELS, open_image, to_rgb, upright
from .schema import MAX_DEPTH, ProcessorConfigSchema, SchemaError, check_depth, validate

# Upscaling beyond this factor is said aloud (e.g. a 10x8 icon blown up to 448x560): the features then
# describe interpolated pixels. Moderate upscaling (224 px photos to 448) is routine and stays quiet.
MAX_QUIET_UPSCALE = 4.0


class SnDImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    snap (`str`, *optional*, defaults to `"resize"`):
        How images are brought to multiples of `patch_size`: `"resize"` rounds both sides down and resizes
        (SnD's feature extraction: 576x880 -> 574x868), `"pad"` centre-pads the normalised image with zeros
        up to the next multiple (the FiT3D / timm probing evaluation), `"none"` leaves the size alone.
        (`None`, as for every image-processor option, means "use the processor's setting".)
    patch_size (`int`, *optional*, defaults to 14):
        The multiple to snap to.
    max_pixels (`int`, *optional*, defaults to 2**27):
        Image files (paths or URLs given to the processor) declaring more pixels are refused before decoding
        (`snd_hf.images.ImageDecodeError`).
    """

    snap: Literal["resize", "pad", "none"]
    patch_size: int
    max_pixels: int


class SnDImageProcessor(PilBackend):
    """Prepares images for `SnDModel`: `pixel_values` [B, 3, H, W] with H and W multiples of 14.

    Default pipeline: decode to RGB with `snd_hf.images` (EXIF orientation applied, 16-bit and float data at
    their true scale, transparency composited over white; every input is RGB, whatever `do_convert_rgb`),
    resize (bicubic) so the shortest edge is 448 keeping the aspect ratio, with both sides rounded down to
    multiples of 14 in the same resize (`snap="resize"`; `"pad"` instead centre-pads after normalisation),
    bring values to [0, 1], normalise with the ImageNet mean and std. `do_resize=False` keeps the input size
    and only snaps (576x880 -> 574x868, as SnD extracts features); `size={"height": H, "width": W}` resizes
    to a fixed size.

    Inputs: paths (str or `os.PathLike`), http(s) URLs, PIL images of any mode, arrays or tensors [H, W],
    [H, W, C] or [C, H, W] (C = 1-4). The scale of values follows their type: uint8 / 255, uint16 / 65535;
    float arrays follow transformers' convention, 0-255 units with `do_rescale=True` (then
    `rescale_factor` converts them) and [0, 1] with `do_rescale=False`. Float arrays whose values all lie
    in [0, 1] with `do_rescale=True`, and values outside their range, are an error rather than a dark or
    saturated image. Resizing is 8-bit, as SnD's PIL pipeline (deeper images are rounded to 8 bits for it);
    without resizing, deeper values keep their precision.

    Note: transformers' `pipeline("image-feature-extraction")` decodes files and PIL images itself
    (`load_image`: EXIF applied, but converted to 8-bit RGB by plain `convert("RGB")`, which clips 16-bit
    data and drops alpha); give it 8-bit images, or use this processor directly for other kinds.
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
    max_pixels = MAX_PIXELS

    def __init__(self, **kwargs: Unpack[SnDImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)
        settings = {name: getattr(self, name, None) for name in ProcessorConfigSchema.model_fields}
        settings["size"] = {key: value for key, value in vars(self.size).items() if value is not None} if self.size else None
        settings = {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}
        validate(ProcessorConfigSchema, settings, type(self).__name__)

    @classmethod
    def get_image_processor_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """transformers' reading of ``preprocessor_config.json``, through the schema layer
        (:class:`snd_hf.schema.ProcessorConfigSchema`): a bad value is one ``SchemaError`` naming the
        file and the key, before any image is processed."""
        name = str(pretrained_model_name_or_path)
        filename = kwargs.get("image_processor_filename", IMAGE_PROCESSOR_NAME)
        source = name if os.path.isfile(name) else os.path.join(name, kwargs.get("subfolder") or "", filename)
        try:
            values, rest = super().get_image_processor_dict(pretrained_model_name_or_path, **kwargs)
        except RecursionError:
            raise SchemaError(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
        check_depth(values, source)
        validate(ProcessorConfigSchema, values, source)
        return values, rest

    @staticmethod
    def _check_snap(snap: str, patch_size: int) -> None:
        if snap not in ("resize", "pad", "none"):
            raise ValueError(f"snap must be 'resize', 'pad' or 'none', got {snap!r}")
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")

    def _output_size(
        self, image: np.ndarray, do_resize: bool, size: SizeDict, snap: str, patch_size: int
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

    def _preprocess_image_like_inputs(self, images: Any, *args, **kwargs) -> BatchFeature:
        """Decode paths and URLs with `snd_hf.images` (pixel cap, EXIF) before transformers sees them."""
        max_pixels = self.max_pixels if kwargs.get("max_pixels") is None else kwargs["max_pixels"]
        return super()._preprocess_image_like_inputs(_open_files(images, max_pixels), *args, **kwargs)

    def process_image(
        self,
        image: Image.Image | np.ndarray | torch.Tensor,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> np.ndarray:
        """One input -> [3, H, W]: uint8 for 8-bit sources, float32 in [0, 1] otherwise (`snd_hf.images.to_rgb`)."""
        do_rescale = self.do_rescale if kwargs.get("do_rescale") is None else kwargs["do_rescale"]
        rescale_factor = self.rescale_factor if kwargs.get("rescale_factor") is None else kwargs["rescale_factor"]
        channels = None
        if input_data_format is not None:
            channels = "first" if ChannelDimension(input_data_format) == ChannelDimension.FIRST else "last"
        image = upright(image) if isinstance(image, Image.Image) else image
        rgb = to_rgb(image, float_range=1 / rescale_factor if do_rescale else 1.0, channels=channels)
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))

    def resize(
        self, image: np.ndarray, size: SizeDict, resample: PILImageResampling | None = None, **kwargs
    ) -> np.ndarray:
        """Resize a [3, H, W] image in 8 bits with PIL, as SnD did; float32 images in [0, 1] are rounded to
        8 bits first (transformers would truncate them), so a 16-bit image resizes exactly as its 8-bit
        conversion. Returns uint8 [3, h, w]."""
        if image.dtype != np.uint8:
            image = np.round(image * 255).astype(np.uint8)
        return super().resize(image, size=size, resample=resample, **kwargs)

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
        snap: Literal["resize", "pad", "none"] | None = None,
        patch_size: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Resize, snap, bring to [0, 1], normalise (and pad) each [3, H, W] image; see the class docstring."""
        snap = self.snap if snap is None else snap
        patch_size = self.patch_size if patch_size is None else patch_size
        self._check_snap(snap, patch_size)
        max_pixels = self.max_pixels if kwargs.get("max_pixels") is None else kwargs["max_pixels"]
        processed = []
        for image in images:
            # Deviation: one resize straight to the snapped size (SnD resized with PIL, then bilinearly in torch).
            height, width = self._output_size(image, do_resize, size, snap, patch_size)
            # The resized image is capped like a decoded one (at least at the default cap, since a small
            # max_pixels limits what is read, not what a small image may be resized to): e.g. a 1x20000
            # strip brought to a shortest edge of 448 would need billions of pixels.
            if height * width > max(max_pixels, MAX_PIXELS):
                raise ValueError(
                    f"an image of {image.shape[-2]}x{image.shape[-1]} pixels would be resized to {height}x{width}"
                    f" = {height * width} pixels, more than max_pixels ({max(max_pixels, MAX_PIXELS)}): crop it to a"
                    " less extreme aspect ratio, or give a fixed size={'height': H, 'width': W}"
                )
            if min(height / image.shape[-2], width / image.shape[-1]) > MAX_QUIET_UPSCALE:
                _warn_upscale(tuple(image.shape[-2:]), (height, width))
            if (height, width) != image.shape[-2:]:
                image = self.resize(image, size=SizeDict(height=height, width=width), resample=resample)
            if image.dtype == np.uint8:  # float images are in [0, 1] already (process_image)
                image = self.rescale(image, 1 / 255)
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


def _open_files(images: Any, max_pixels: int) -> Any:
    """The same nesting of images with every path (str or os.PathLike) and http(s) URL decoded by
    `snd_hf.images.open_image`."""
    if isinstance(images, (list, tuple)):
        return [_open_files(image, max_pixels) for image in images]
    if isinstance(images, str) and images.startswith(("http://", "https://")):
        response = httpx.get(images, follow_redirects=True, timeout=30)
        response.raise_for_status()
        return open_image(io.BytesIO(response.content), source=images, max_pixels=max_pixels)
    if isinstance(images, (str, os.PathLike)):
        return open_image(images, max_pixels=max_pixels)
    return images


__all__ = ["SnDImageProcessor"]


@functools.lru_cache(maxsize=1024)
def _warn_upscale(source: tuple[int, int], target: tuple[int, int]) -> None:
    """Say once per process and pair of sizes that an image is blown up (a folder of tiny images gives one line,
    not one per image: decoding resets Python's own once-per-place memory of warnings)."""
    scale = min(target[0] / source[0], target[1] / source[1])
    warnings.warn(
        f"an image of {source[0]}x{source[1]} pixels (HxW) is upscaled {scale:.0f}x to {target[0]}x{target[1]}: its "
        "features describe interpolated pixels (pass larger images, or a smaller size={'shortest_edge': ...})",
        UserWarning,
        stacklevel=4,
    )
