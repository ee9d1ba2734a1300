"""One schema layer: every JSON and YAML file snd-hf reads goes through here.

A file is read with a size cap (checked with ``stat`` before reading) and a nesting cap (a
200,000-deep document is one error, never a ``RecursionError``); YAML is read with ``safe_load``
only (a ``!!python/object`` tag is refused before anything is built). The parsed value is then
validated by a pydantic model: types (``"false"`` is not a boolean), finite numbers, ranges and
cross-checks, with size caps checked before anything is allocated. Whatever fails is one
:class:`SchemaError` naming the file and the key::

    /path/config.json: num_attention_heads must be greater than 0 (got 0)

The models of the package's files are here, one place to read what each file may hold:
:class:`ModelConfigSchema` (``config.json``), :class:`ProcessorConfigSchema`
(``preprocessor_config.json``), :class:`FieldConfigSchema` (a feature field's ``field.json``),
:class:`ResultsSchema` (``snd eval``'s ``results.json`` and cached metrics), :class:`RunManifestSchema`
(a run folder's ``snd_run.json``). The training YAML is
read by :func:`read_yaml` and checked by ``snd_hf.training.config.TrainingConfig``; the part of it that
fixes a run's initial weights also by :class:`RunStartSchema`, so evaluation reads it without the trainer.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_FILE_BYTES = 16 * 2**20  # every configuration file the package writes is far below this
MAX_DEPTH = 32  # nesting of objects/lists; the package's own files use at most 5 levels
# Largest image side a configuration may ask for: 8192^2 RGB float32 pixels are 0.8 GB, so
# anything larger is a typo or hostile, and is refused before it is allocated.
MAX_IMAGE_SIDE = 8192
MIN_SH_DEGREE = 2  # a feature field's spherical harmonics need degree 2 for the reflected lobe

Model = TypeVar("Model", bound=BaseModel)


class SchemaError(ValueError):
    """A configuration file (or value) that does not fit its schema: one line naming the source and the key."""


def read_json(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """The parsed content of the JSON file ``path``, within the size and nesting caps.

    Raises:
        SchemaError: the file is larger than ``max_bytes``, is not UTF-8 JSON, or nests deeper than
            ``MAX_DEPTH``.
        OSError: the file cannot be read.
    """

    def parse(data: bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            raise SchemaError(f"{path}: not valid JSON ({one_line(error)})") from None

    return _read(Path(path), max_bytes, parse)


def read_yaml(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """The parsed content of the YAML file ``path`` (``yaml.safe_load``: plain data only), within the
    size and nesting caps.

    Raises:
        SchemaError: too large, too deep, not valid YAML, or holding a tag other than plain data
            (e.g. ``!!python/object``), naming the line.
        OSError: the file cannot be read.
    """

    def parse(data: bytes) -> Any:
        try:
            return yaml.safe_load(data)
        except yaml.constructor.ConstructorError as error:
            mark = error.problem_mark
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise SchemaError(f"{path}: {error.problem}{where}; only plain data (no tags) is read") from None
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise SchemaError(f"{path}: not valid YAML ({one_line(error)})") from None

    return _read(Path(path), max_bytes, parse)


def _read(path: Path, max_bytes: int, parse: Callable[[bytes], Any]) -> Any:
    """``parse`` of the bytes of ``path``, its size checked before reading and its nesting after."""
    size = path.stat().st_size
    if size > max_bytes:
        raise SchemaError(f"{path}: {size} bytes, more than the {max_bytes} a configuration file may hold")
    try:
        value = parse(path.read_bytes())
    except RecursionError:  # the parser's own recursion: deeper than any cap
        raise SchemaError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None
    check_depth(value, path)
    return value


def check_depth(value: Any, source: str | Path, limit: int = MAX_DEPTH) -> None:
    """Refuse a parsed document that nests objects/lists deeper than ``limit`` (iteratively: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    raise SchemaError(f"{source}: nested deeper than {limit} levels")
                stack.append((child, depth + 1))


def validate(model: type[Model], values: Any, source: str | Path) -> Model:
    """``values`` checked by ``model``; the first problem is one :class:`SchemaError` naming ``source`` and the key."""
    if not isinstance(values, dict):
        raise SchemaError(f"{source}: must hold a JSON object of keys and values, got {type(values).__name__}")
    try:
        return model.model_validate(values)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise SchemaError(f"{source}: {_describe(problems[0])}{more}") from None


def load(path: str | Path, model: type[Model], max_bytes: int = MAX_FILE_BYTES) -> Model:
    """The JSON file ``path`` read by :func:`read_json` and checked by ``model``."""
    return validate(model, read_json(path, max_bytes), path)


def one_line(error: BaseException) -> str:
    """An error's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__


def _describe(problem: dict[str, Any]) -> str:
    """One pydantic error as ``key must ... (got value)``."""
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"]).lstrip(".")
    message = problem["msg"].removeprefix("Value error, ")
    message = {"Field required": "is required", "Extra inputs are not permitted": "is not a known key"}.get(message, message)
    message = message.replace("Input should", "must").replace("List should", "must").replace("Dictionary should", "must")
    if problem["type"] == "missing":
        return f"{key} {message}"
    shown = repr(problem["input"])
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{key} {message} (got {shown})" if key else f"{message}"


# --------------------------------------------------------------------------------------- value types
class _Schema(BaseModel):
    """Strict types: no string for a number or a boolean, no NaN or infinity."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", frozen=True)


Finite = float
Positive = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
ImageSide = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]


# ------------------------------------------------------------------------------------ config.json
class ModelConfigSchema(_Schema):
    """An SnD model's ``config.json`` (``SnDConfig``): the architecture fields' types and ranges.

    Other keys (transformers' own, ``training_info``) pass through to ``SnDConfig``, whose
    annotations check their types.
    """

    model_config = ConfigDict(extra="allow")

    hidden_size: Annotated[int, Field(ge=1, le=65536)]
    num_hidden_layers: Annotated[int, Field(ge=1, le=4096)]
    num_attention_heads: Annotated[int, Field(ge=1, le=4096)]
    mlp_ratio: Annotated[float, Field(gt=0, le=64)]
    hidden_dropout_prob: Probability
    attention_probs_dropout_prob: Probability
    initializer_range: Annotated[float, Field(ge=0)]
    layer_norm_eps: Annotated[float, Field(gt=0, le=1)]
    image_size: ImageSide
    patch_size: ImageSide
    num_channels: Annotated[int, Field(ge=1, le=64)]
    layerscale_value: Finite
    drop_path_rate: Probability
    interpolate_offset: Finite
    num_register_tokens: Annotated[int, Field(ge=0, le=4096)] = 0

    @model_validator(mode="after")
    def _shapes_fit(self) -> ModelConfigSchema:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        return self


# -------------------------------------------------------------------------- preprocessor_config.json
class _Size(_Schema):
    shortest_edge: ImageSide | None = None
    longest_edge: ImageSide | None = None
    height: ImageSide | None = None
    width: ImageSide | None = None


PerChannel = Annotated[list[float], Field(min_length=1, max_length=3)]  # one value, or one per RGB channel


class ProcessorConfigSchema(_Schema):
    """``SnDImageProcessor``'s ``preprocessor_config.json``: normalisation, sizes and snapping.

    Only the keys the processor uses are checked (others are transformers' own)."""

    model_config = ConfigDict(extra="allow")

    image_mean: PerChannel | None = None
    image_std: Annotated[list[Positive], Field(min_length=1, max_length=3)] | None = None
    size: _Size | None = None
    rescale_factor: Positive | None = None
    patch_size: Annotated[int, Field(ge=1, le=1024)] | None = None
    max_pixels: Annotated[int, Field(ge=1)] | None = None
    snap: Literal["resize", "pad", "none"] | None = None
    do_resize: bool | None = None
    do_rescale: bool | None = None
    do_normalize: bool | None = None

    @field_validator("image_mean", "image_std", mode="before")
    @classmethod
    def _one_value_for_all_channels(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# -------------------------------------------------------------------------------------- field.json
class FeatureSpaceSchema(_Schema):
    source_name: str
    source_id: str
    channels: Annotated[int, Field(ge=1, le=65536)]
    scale: Positive


class FieldConfigSchema(_Schema):
    """A feature field's ``field.json`` (``snd_hf.fields.field.FeatureField.save``).

    Cross-checks against the tensors (counts, the training cameras) are made by the loader.
    """

    format_version: Literal[1]
    num_gaussians: Annotated[int, Field(ge=0, le=2**31)]
    sh_degree: Annotated[int, Field(ge=MIN_SH_DEGREE, le=16)]
    feature_dim: Annotated[int, Field(ge=0, le=65536)]
    disentangled: bool
    image_size: Annotated[list[ImageSide], Field(min_length=2, max_length=2)] | None
    view_names: Annotated[list[str], Field(max_length=1_000_000)] | None
    feature_space: FeatureSpaceSchema | None
    info: dict[str, Any]
    weights_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


# -------------------------------------------------------------------------------- results.json
class ResultsSchema(_Schema):
    """``snd eval``'s ``results.json``: the evaluation's identity and ``{task: {model: {metric: value}}}``.

    Metrics may be NaN (written as ``NaN`` by ``json.dumps``) when a probe saw no valid pixel."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=True)

    results: dict[str, dict[str, dict[str, float | None]]] | None = None
    pictures: list[str] | None = None


class MetricsSchema(_Schema):
    """A cached task result of ``snd eval`` (``cache/results/*.json``)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=True)

    metrics: dict[str, float | None]


# ------------------------------------------------------------------------------ snd_run.json
def is_inside_name(name: object) -> bool:
    """Whether ``name`` is a plain relative path below its folder (no ``..``, ``.``, root, backslash)."""
    if not isinstance(name, str) or not name or "\\" in name or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _inside(name: str) -> str:
    if not is_inside_name(name):
        raise ValueError("must be a path inside the folder (no absolute path, '..' or backslash)")
    return name


InsideName = Annotated[str, AfterValidator(_inside)]
InsideNames = Annotated[list[InsideName], Field(max_length=10_000_000)]


class _RunCommitSchema(_Schema):
    """A commit a run recorded and has not finished carrying out (``snd_hf.run_folder``)."""

    command: str | None = None
    identity: dict[str, Any] = {}
    info: dict[str, Any] = {}
    outputs: InsideNames = []
    moves: list[Annotated[list[InsideName], Field(min_length=2, max_length=2)]] = []
    remove: InsideNames = []


class RunManifestSchema(_Schema):
    """A run folder's ``snd_run.json`` (``snd_hf.run_folder``): what made the files, every file the
    runs wrote (paths inside the folder only: a hand-edited manifest never makes a run touch anything
    else) and the state of the last run. Other keys pass through."""

    model_config = ConfigDict(extra="allow")

    command: str | None = None
    identity: dict[str, Any] = {}
    info: dict[str, Any] = {}
    outputs: InsideNames = []
    status: Literal["running", "complete", "failed"] | None = None
    pid: int | None = None
    host: str | None = None
    running_command: str | None = None
    running: dict[str, Any] | None = None
    commit: _RunCommitSchema | None = None


# ------------------------------------------------------------------- a training run's config.yaml
class RunStartSchema(_Schema):
    """The keys of a training run's ``config.yaml`` that fix the backbone it starts from
    (:mod:`snd_hf.initial_weights`); its other keys are ``snd_hf.training.TrainingConfig``'s and pass
    unread."""

    model_config = ConfigDict(extra="ignore")

    init: Literal["random", "original", "pretrained", "pretrained_2d"]
    model_path: str | None
    size: Literal["small", "base"] | None
    seed: Annotated[int, Field(ge=0)]
    hidden_size: Annotated[int, Field(ge=1, le=65536)]
    num_hidden_layers: Annotated[int, Field(ge=1, le=4096)]
    num_attention_heads: Annotated[int, Field(ge=1, le=4096)]
    finetune: Literal["lora", "full"]
    lora_r: Annotated[int, Field(ge=1)]
    lora_alpha: Positive
    lora_dropout: Probability
    lora_targets: list[str]


# ------------------------------------------------------------------------------ numeric options
def finite_number(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    """``value`` when it is a finite number (not a boolean) within ``[low, high]`` (either bound may be
    None); a :class:`SchemaError` naming ``name`` otherwise. For options given to library functions."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SchemaError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"<= {high}" if low is None else f"within [{low}, {high}]"
        raise SchemaError(f"{name} must be {bounds}, got {value!r}")
    return value


def number_option(kind: type[int] | type[float] = float, low: float | None = None, high: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type=``: the text as ``kind`` when finite and within ``[low, high]``, else
    argparse's one-line error for that option (``nan``, ``inf`` and ``1e39`` are refused before any work)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        try:
            return finite_number("value", value, low, high)
        except SchemaError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("value ")) from None

    parse.__name__ = kind.__name__  # argparse names the expected type after it
    return parse


__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_IMAGE_SIDE",
    "FieldConfigSchema",
    "MetricsSchema",
    "ModelConfigSchema",
    "ProcessorConfigSchema",
    "ResultsSchema",
    "RunManifestSchema",
    "SchemaError",
    "check_depth",
    "finite_number",
    "is_inside_name",
    "number_option",
    "load",
    "read_json",
    "read_yaml",
    "validate",
]
