"""Loading SnD weights from the Hugging Face Hub (or a local folder laid out like a Hub repo).

Three repo layouts load through one call, ``SnDModel.from_pretrained(repo_or_dir, size=..., blending=...)``:

- **original** (the published ``david-shavin/SnD``): raw state dicts in the torch.hub DINOv2 key
  layout and no ``config.json``, one file per variant (``VARIANT_FILES``). The config comes from
  ``SnDConfig.from_variant(size, blending)``, the keys are converted and loaded strictly;
- **native** (``save_pretrained`` / ``push_to_hub`` output: ``config.json`` + ``model.safetensors``):
  transformers loading, made strict: the weights' safetensors headers are checked against the config
  before anything is built (``loading.check_native_weights``), every loaded tensor must be finite;
- **native, several variants**: one native folder per variant (``VARIANT_FOLDERS``), chosen by
  ``size``/``blending``.

``size`` defaults to ``"small"`` and ``blending`` to ``True`` where a variant must be chosen.
Downloads go through ``huggingface_hub`` (cache, ``revision``, ``token``, ``cache_dir``,
``force_download``, ``local_files_only``, ``HF_HUB_OFFLINE``). Offline, the files already in the
cache stand in for the repo listing.

A name that looks like a local path (``local_path_reason``) is never sent to the Hub: if it is not
a folder, loading fails at once with "no such folder". Local folders are probed for the expected
file names only (never listed recursively), and a folder that a crash left moved aside to
``.<name>.old`` (``snd_hf.files.replace_path``) is restored first.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import HFValidationError, OfflineModeIsEnabled
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import httpx, validate_repo_id
from transformers import PreTrainedModel
from transformers.configuration_utils import PreTrainedConfig

from .configuration_snd import SND_VARIANTS, SnDConfig
from .files import restore_interrupted
from .loading.architecture import SHAPE_FIELDS
from .loading.errors import CheckpointError
from .loading.native import check_native_weights, read_native_shapes
from .loading.reading import CHECKPOINT_SUFFIXES, check_finite
from .schema import SchemaError, read_json

Size = Literal["small", "base"]

# The published repo and its files: (size, blending) -> original-layout state dict.
SND_HUB_REPO = "david-shavin/SnD"
VARIANT_FILES: dict[tuple[str, bool], str] = {
    ("small", True): "dinov2_small_snd.pth",
    ("base", True): "dinov2_base_snd.pth",
    ("small", False): "dinov2_small_snd_no_blending.pth",
    ("base", False): "dinov2_base_snd_no_blending.pth",
}
# Native repos holding several variants: (size, blending) -> subfolder with config.json + weights.
VARIANT_FOLDERS: dict[tuple[str, bool], str] = {
    ("small", True): "small",
    ("base", True): "base",
    ("small", False): "small_no_blending",
    ("base", False): "base_no_blending",
}
CONFIG_NAME = "config.json"
# Weights of a native checkpoint, in the order transformers prefers them.
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

# from_pretrained arguments that only concern finding and downloading files.
DOWNLOAD_KWARGS = ("revision", "cache_dir", "force_download", "local_files_only", "token")
# Accepted besides them when loading an original-layout file; config fields are accepted as overrides.
ORIGINAL_LOAD_KWARGS = ("dtype", "torch_dtype", "attn_implementation")
CONFIG_OVERRIDE_KWARGS = ("out_features", "out_indices", "output_attentions")


def describe_variant(size: str, blending: bool) -> str:
    return f"{size} ({'blending' if blending else 'no blending'})"


@dataclass
class RepoLayout:
    """What a repo (or local folder) holds, read from its file list.

    Attributes:
        native_root: a ``config.json`` at the top: a single native checkpoint.
        native_variants: (size, blending) -> subfolder of the native variants present.
        original_variants: (size, blending) -> file of the original-layout variants present.
    """

    native_root: bool
    native_variants: dict[tuple[str, bool], str]
    original_variants: dict[tuple[str, bool], str]

    @classmethod
    def from_files(cls, files: Iterable[str]) -> RepoLayout:
        files = set(files)
        return cls(
            native_root=CONFIG_NAME in files,
            native_variants={key: folder for key, folder in VARIANT_FOLDERS.items() if f"{folder}/{CONFIG_NAME}" in files},
            original_variants={key: name for key, name in VARIANT_FILES.items() if name in files},
        )

    def available(self) -> list[str]:
        """Human-readable list of the variants present."""
        found = [f"{describe_variant(*key)}: {folder}/" for key, folder in self.native_variants.items()]
        found += [f"{describe_variant(*key)}: {name}" for key, name in self.original_variants.items()]
        return found


def check_revision(revision: str | None) -> None:
    """Refuse a revision that could name a path outside the cache (absolute, ``..``, backslash): git
    refs never contain them, and the offline cache lookup joins the revision to a folder."""
    if revision is None:
        return
    if not isinstance(revision, str) or not revision or ".." in revision or revision.startswith("/") or "\\" in revision:
        raise ValueError(f"revision must be a branch, tag or commit id, got {revision!r}")


def local_path_reason(name: str) -> str | None:
    """Why `name` is a local path rather than a Hub repo id, or None if it may be a repo id.

    A path: starts with ``/``, ``.`` or ``~``; uses the OS path separator (where it is not ``/``);
    has more than one ``/``; its parent folder exists here; names a checkpoint file; or is not a
    valid repo id (huggingface_hub's ``validate_repo_id``).
    """
    if name.startswith(("/", ".", "~")) or os.path.isabs(name):
        return "it starts with '/', '.' or '~'"
    if any(separator and separator != "/" and separator in name for separator in (os.sep, os.altsep)):
        return "it contains the path separator"
    if name.count("/") > 1:
        return "it has more than one '/'"
    parent = name.rpartition("/")[0]
    if parent and os.path.isdir(parent):
        return f"the folder {parent!r} exists here"
    if name.endswith((*CHECKPOINT_SUFFIXES, ".json")):
        return "it names a file"
    try:
        validate_repo_id(name)
    except HFValidationError:
        return "it is not a valid Hub repo id"
    return None


def _local_files(folder: str, subfolder: str | None) -> list[str]:
    """The files of a local folder that a layout can use, probed by name (a huge folder is never listed)."""
    folders = ["", *(f"{name}/" for name in VARIANT_FOLDERS.values()), *([f"{subfolder}/"] if subfolder else [])]
    candidates = [*VARIANT_FILES.values(), *(prefix + name for prefix in folders for name in (CONFIG_NAME, *WEIGHT_NAMES))]
    return [name for name in candidates if os.path.isfile(os.path.join(folder, name))]


def _cached_files(repo_id: str, revision: str, cache_dir: str | os.PathLike | None) -> list[str] | None:
    """Files of a repo revision already in the huggingface_hub cache, or None if nothing is cached."""
    storage = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = storage / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    return [path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*") if path.is_file()]


def list_repo_files(
    repo_id: str,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> tuple[list[str], bool]:
    """Files of a Hub repo, from the Hub or, offline / unreachable, from the local cache.

    Returns:
        (files, from_cache): ``from_cache`` is True when only the cached files could be listed.
    Raises:
        OSError: offline (or the Hub unreachable) and nothing of this repo is cached.
        huggingface_hub.errors.RepositoryNotFoundError / RevisionNotFoundError: from the Hub.
    """
    check_revision(revision)
    revision = revision or constants.DEFAULT_REVISION
    failure: Exception | None = None
    if not (local_files_only or constants.HF_HUB_OFFLINE):
        try:
            # One request without retries first: an unreachable Hub fails here at once, not after
            # the backoff retries (about 20 s) of huggingface_hub's paginated listing below.
            api = HfApi()
            api.model_info(repo_id, revision=revision, token=token, timeout=constants.HF_HUB_ETAG_TIMEOUT)
            return api.list_repo_files(repo_id, revision=revision, token=token), False
        except (httpx.ConnectError, httpx.TimeoutException, OfflineModeIsEnabled) as error:
            failure = error
    cached = _cached_files(repo_id, revision, cache_dir)
    if cached is None:
        reason = f"the Hub could not be reached ({failure})" if failure else "offline mode is on"
        # A repo id is also a relative path: say so when no folder of that name is here either.
        local = f" (there is no local folder ./{repo_id} either)" if not os.path.exists(repo_id) else ""
        raise OSError(
            f"cannot load {repo_id!r} (revision {revision!r}): {reason} and nothing of it is in the cache"
            f" {cache_dir or constants.HF_HUB_CACHE}{local}. Connect once to download it, or pass a local folder."
        ) from failure
    return cached, True


def _check_original_options(options: dict[str, Any]) -> None:
    """Refuse ``from_pretrained`` arguments that an original-layout checkpoint cannot honour."""
    config_fields = {field.name for field in dataclasses.fields(SnDConfig)} | set(CONFIG_OVERRIDE_KWARGS)
    unknown = sorted(set(options) - config_fields - set(ORIGINAL_LOAD_KWARGS))
    if unknown:
        raise TypeError(
            f"from_pretrained got arguments {unknown} that do not apply to an original-layout SnD checkpoint;"
            f" accepted: {list(DOWNLOAD_KWARGS + ORIGINAL_LOAD_KWARGS + CONFIG_OVERRIDE_KWARGS)} and SnDConfig fields"
        )


def _load_original(
    cls: type[PreTrainedModel],
    checkpoint: str,
    size: str,
    blending: bool,
    options: dict[str, Any],
) -> PreTrainedModel:
    """Load an original-layout variant file strictly into ``cls``, with the variant's config."""
    options = dict(options)
    dtype = options.pop("dtype", None) or options.pop("torch_dtype", None)
    attn_implementation = options.pop("attn_implementation", None)
    expected = SnDConfig.from_variant(size, blending)
    model = cls.from_original_checkpoint(
        checkpoint, num_attention_heads=expected.num_attention_heads, size=size, blending=blending, **options
    )
    for name, value in SND_VARIANTS[size].items():
        if getattr(model.config, name) != value:
            raise ValueError(
                f"{checkpoint} does not hold the {size} architecture: {name} is {getattr(model.config, name)},"
                f" expected {value}"
            )
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    if dtype not in (None, "auto"):  # "auto": the checkpoint's own dtype (float32)
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return model


def _native_shape_fields(file: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The `SHAPE_FIELDS` transformers will build the model with: from ``config=`` if given, else from
    ``file`` with those among ``kwargs`` applied (raw values: an absurd config is never built). Errors
    name the file."""
    if isinstance(kwargs.get("config"), PreTrainedConfig):
        return {name: getattr(kwargs["config"], name) for name in SHAPE_FIELDS if hasattr(kwargs["config"], name)}
    try:
        values = SnDConfig.check_file(read_json(file), file)
    except SchemaError as error:
        raise CheckpointError(f"{error}: the checkpoint's config is corrupt") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {file} ({error}): the checkpoint's config is corrupt") from None
    return {name: kwargs.get(name, values[name]) for name in SHAPE_FIELDS if name in values or name in kwargs}


def _load_native(
    native_from_pretrained: Callable[..., PreTrainedModel],
    name: str,
    model_args: tuple,
    kwargs: dict[str, Any],
    subfolder: str | None,
    files: list[str],
) -> PreTrainedModel:
    """transformers' loading of the native checkpoint at ``name``/``subfolder``, made strict: the
    weights (safetensors headers) must be exactly those of the config before the model is built, and
    every loaded tensor must be finite.

    Raises:
        CheckpointError: naming the missing, unexpected or misshaped keys, an unreadable file, or the
            first non-finite tensor.
    """
    prefix = f"{subfolder}/" if subfolder else ""
    weights = next((weight for weight in WEIGHT_NAMES if prefix + weight in files), None)
    if weights is None:
        raise FileNotFoundError(f"{name}: {prefix}{CONFIG_NAME} has no weights beside it (none of {list(WEIGHT_NAMES)})")
    download = {key: kwargs[key] for key in DOWNLOAD_KWARGS if key in kwargs}

    def fetch(filename: str) -> str:
        if os.path.isdir(name):
            return os.path.join(name, prefix + filename)
        return hf_hub_download(name, filename, subfolder=subfolder or None, **download)

    fields = _native_shape_fields(fetch(CONFIG_NAME), kwargs)
    weight_files = [fetch(weights)]
    if weights.endswith(".index.json"):
        try:
            shards = sorted(set(read_json(weight_files[0])["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as error:
            raise CheckpointError(f"cannot read the shard index {weight_files[0]} ({error!r})") from None
        weight_files = [fetch(shard) for shard in shards]
    check_native_weights(read_native_shapes([Path(file) for file in weight_files]), fields, f"{name}/{prefix}{weights}")
    if download.get("force_download"):  # fetched just now: transformers takes them from the cache
        kwargs = {**kwargs, "force_download": False}
    loaded = native_from_pretrained(name, *model_args, **({"subfolder": subfolder} if subfolder else {}), **kwargs)
    model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
    check_finite(model.state_dict(), f"{name}/{prefix}{weights}")
    return loaded


def from_pretrained(
    cls: type[PreTrainedModel],
    native_from_pretrained: Callable[..., PreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike,
    *model_args,
    size: Size | None = None,
    blending: bool | None = None,
    **kwargs,
) -> PreTrainedModel:
    """Load ``cls`` from a Hub repo id or local folder in any of the three layouts (module docstring).

    Args:
        cls: ``SnDModel`` or ``SnDBackbone``.
        native_from_pretrained: transformers' ``PreTrainedModel.from_pretrained`` bound to ``cls``.
        pretrained_model_name_or_path: Hub repo id (``"david-shavin/SnD"``) or local folder.
        size: ``"small"`` (ViT-S/14) or ``"base"`` (ViT-B/14); ``"small"`` when a variant must be chosen.
        blending: the SnD training variant (True: segmentation/depth/normals, False: correspondence);
            True when a variant must be chosen.
        kwargs: transformers ``from_pretrained`` arguments (download ones: ``revision``, ``cache_dir``,
            ``force_download``, ``local_files_only``, ``token``).
    Returns:
        The model in eval mode, with ``config.size`` / ``config.blending`` set for SnD variants.
    Raises:
        FileNotFoundError: a local-looking path that is not a folder ("no such folder", at once, without
            a network request); or the requested variant is not there (the message lists those that are).
        NotADirectoryError: the path is a file (original-layout files load with ``from_original_checkpoint``).
        CheckpointError: weights that do not match their config, unreadable or non-finite weights.
        ValueError: a revision with ``..`` or an absolute path.
    """
    if size is not None and size not in SND_VARIANTS:
        raise ValueError(f"size must be one of {sorted(SND_VARIANTS)}, got {size!r}")
    if blending is not None and not isinstance(blending, bool):
        raise TypeError(f"blending must be a bool, got {type(blending).__name__}")
    check_revision(kwargs.get("revision"))
    subfolder = kwargs.pop("subfolder", None) or None
    if subfolder and (size is not None or blending is not None):
        raise ValueError("pass either subfolder= or size=/blending=, not both (size/blending choose the subfolder)")

    name = os.fspath(pretrained_model_name_or_path)
    if name.startswith("~"):
        name = os.path.expanduser(name)
    if not os.path.isdir(name) and os.path.isfile(name):
        raise NotADirectoryError(
            f"{name} is a file, not a checkpoint folder: load an original-layout file with"
            " SnDModel.from_original_checkpoint, or convert it with `snd convert`"
        )
    if not os.path.isdir(name) and not restore_interrupted(Path(name)) and (reason := local_path_reason(name)):
        raise FileNotFoundError(f"no such folder: {name} (read as a local path because {reason}; a Hub repo id is namespace/name)")
    download = {key: kwargs[key] for key in DOWNLOAD_KWARGS if key in kwargs}
    from_cache = False
    if os.path.isdir(name):
        files = _local_files(name, subfolder)
    else:
        files, from_cache = list_repo_files(
            name,
            revision=download.get("revision"),
            token=download.get("token"),
            cache_dir=download.get("cache_dir"),
            local_files_only=bool(download.get("local_files_only")),
        )
    if subfolder:
        return _load_native(native_from_pretrained, name, model_args, kwargs, subfolder, files)
    layout = RepoLayout.from_files(files)
    wanted = (size or "small", True if blending is None else blending)

    if layout.native_root:
        loaded = _load_native(native_from_pretrained, name, model_args, kwargs, None, files)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        for field, value in (("size", size), ("blending", blending)):
            if value is not None and getattr(model.config, field) != value:
                raise ValueError(
                    f"{name} holds a single checkpoint with {field}={getattr(model.config, field)!r}, not the"
                    f" requested {field}={value!r}"
                )
        return loaded
    if wanted in layout.native_variants:
        return _load_native(native_from_pretrained, name, model_args, kwargs, layout.native_variants[wanted], files)
    if wanted in layout.original_variants:
        if model_args:
            raise TypeError(f"positional model arguments do not apply to an original-layout checkpoint: {model_args}")
        options = {key: value for key, value in kwargs.items() if key not in DOWNLOAD_KWARGS}
        _check_original_options(options)
        filename = layout.original_variants[wanted]
        if os.path.isdir(name):
            checkpoint = os.path.join(name, filename)
        else:
            checkpoint = hf_hub_download(name, filename, **download)
        return _load_original(cls, checkpoint, *wanted, options)

    available = layout.available()
    raise FileNotFoundError(
        f"{name} has no {describe_variant(*wanted)} variant: neither {VARIANT_FILES[wanted]} nor"
        f" {VARIANT_FOLDERS[wanted]}/{CONFIG_NAME} (nor a top-level {CONFIG_NAME}) is there. "
        + (f"Variants available: {'; '.join(available)}." if available else "It holds no SnD variant.")
        + (" (Offline: only the files already in the local cache were checked.)" if from_cache else "")
    )


__all__ = [
    "SND_HUB_REPO",
    "VARIANT_FILES",
    "VARIANT_FOLDERS",
    "WEIGHT_NAMES",
    "RepoLayout",
    "check_revision",
    "describe_variant",
    "from_pretrained",
    "list_repo_files",
    "local_path_reason",
]
