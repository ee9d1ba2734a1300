"""The training configuration: one typed, flat dataclass, read from YAML and ``--key value`` flags.

Like nanoGPT's configurator, a run is ``defaults ← config file ← command line``; unlike it, every
key is checked against :class:`TrainingConfig` and an unknown key, a value of the wrong type or a
missing required path is rejected *before* any data is generated or any model is built.

Example::

    config = TrainingConfig.from_args(["--config", "training/configs/synthetic_tiny.yaml", "--max_steps", "20"])
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from snd_hf.schema import MAX_IMAGE_SIDE, SchemaError, read_yaml

# Shipped configs, in a source checkout (train.py passes its own folder's configs/ explicitly).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "training" / "configs"
DEFAULT_CONFIG = "synthetic_tiny"


@dataclass
class TrainingConfig:
    """Every setting of an SnD training run (the defaults are the tiny synthetic run's).

    Paper values (ORIGINAL.md, "Optimisation") are in ``training/configs/scannetpp_vit{s,b}14.yaml``.
    The defaults are the CPU recipe of docs/snd_effect.md: a tiny ViT
    2D-pretrained by ``training/pretrain_2d.py``, dense InfoNCE on the backbone tokens against an
    EMA teacher (0.99 every step), patch-aligned upsampling, no blending, full fine-tuning.
    """

    # --- run ---------------------------------------------------------------------------------
    output_dir: str = "outputs/snd-synthetic-tiny"  # checkpoints, losses.jsonl, the final student
    seed: int = 0  # model init, data order and dropout
    max_steps: int = 2000  # optimizer steps
    save_steps: int = 500  # full-state checkpoint (and native export) every N steps, and at the end
    log_steps: int = 1  # per-step losses go to output_dir/losses.jsonl; trackers every N steps
    resume_from_checkpoint: str | None = None  # a checkpoint directory or "latest"
    checkpoints_total_limit: int | None = None  # keep only the newest N complete checkpoints
    report_to: str = "none"  # "none", "tensorboard", "all" (accelerate trackers)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate autocast (fp16 adds loss scaling)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    push_to_hub: bool = False  # upload the final student (access is checked before training)
    hub_model_id: str | None = None  # the Hub repository, user/name (required with push_to_hub)
    hub_private: bool = False  # create the Hub repository as private

    # --- reliability: reused folders, NaN/inf ---------------------------------------------------
    overwrite_output_dir: bool = False  # start again in a non-empty output_dir (removes its earlier run's outputs)
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss or gradient: stop the run, or skip that step
    max_skipped_steps: int = 10  # with on_nonfinite "skip": stop once more steps than this were skipped

    # --- data --------------------------------------------------------------------------------
    dataset: Literal["synthetic", "scannetpp"] = "synthetic"  # generated rooms, or a ScanNet++ folder (dataset_path)
    dataset_path: str | None = None  # scannetpp: root holding scenes/ (required); synthetic: cache dir
    synthetic_scenes: int = 16  # rooms to generate
    synthetic_frames: int = 12  # frames per generated room
    synthetic_size: list[int] = field(default_factory=lambda: [84, 112])  # generated (H, W)
    image_size: list[int] = field(default_factory=lambda: [84, 112])  # training (H, W): a 6x8 token grid
    context_gap: int = 4  # frames between the two context views
    # Deviation (views per sample, CPU recipe): the original draws 1 target per context pair; 4 here
    # (batch 2: the same 8 target views per step, the teacher runs on 4 context views, not 16).
    num_targets: int = 4  # target views per sample, between the context views
    # "between" (the original: inclusive, a target may be a context frame) or "inside" (never a
    # context frame: every sample carries geometry).
    target_mode: Literal["between", "inside"] = "between"
    near: float = 0.1  # Deviation (data: near/far): the original used 1 / 100 (RE10K values)
    far: float = 20.0  # far plane in metres (see near)
    batch_size: int = 2  # samples (context pairs) per process per micro-batch
    num_workers: int = 0  # DataLoader worker processes
    cache_views: bool = True  # keep decoded views in memory (snd_hf/data/memory.py): small datasets only

    # --- model -------------------------------------------------------------------------------
    # The starting backbone (see model_path). "pretrained_2d": the packaged tiny ViT of
    # training/pretrain_2d.py (snd_hf/assets/pretrained_2d), a 2D self-supervised stand-in for
    # DINOv2, which is not reachable offline.
    init: Literal["random", "original", "pretrained", "pretrained_2d"] = "pretrained_2d"
    model_path: str | None = None  # "original": a torch.hub-layout .pth; "pretrained": an SnD dir
    size: Literal["small", "base"] | None = None  # records the published variant in the config
    hidden_size: int = 48  # architecture of a random init (ignored otherwise)
    num_hidden_layers: int = 2  # (random init)
    num_attention_heads: int = 3  # (random init)
    finetune: Literal["lora", "full"] = "full"  # train LoRA adapters (the paper) or every backbone weight
    lora_r: int = 8  # LoRA rank
    lora_alpha: float = 8.0  # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.1  # dropout on the LoRA input
    # The original's suffix match on "qkv"/"proj" also caught patch_embed.proj, named "projection" here.
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "projection"])

    # --- objective (snd_hf/training/loss.py; sources there) -------------------------------------
    loss: Literal["dino_head", "cosine", "mse", "info_nce"] = "info_nce"  # the paper: "dino_head"
    contrastive_temperature: float = 0.2  # info_nce: softmax temperature over cosine similarities
    teacher_mode: Literal["ema", "frozen"] = "ema"  # EMA of the student (ema_momentum, ema_every), or the start
    # What the student distils. "splat" is SnD; the other two are geometry-free controls with the
    # same compute: the teacher's own tokens of the target view ("self_distillation"), or the
    # nearer context view's tokens at the same grid positions ("cross_view_copy").
    targets: Literal["splat", "self_distillation", "cross_view_copy"] = "splat"
    center_momentum: float | None = None  # dino_head: DINO centring of the teacher logits (DINO: 0.9); SnD: none
    teacher_temp_warmup: float | None = None  # dino_head: DINO's starting teacher temperature (0.04)...
    teacher_temp_warmup_steps: int = 0  # ...rising linearly to teacher_temp over these steps

    # --- DINO heads (loss "dino_head") ----------------------------------------------------------
    head_hidden_dim: int = 128  # DINO head MLP width
    head_bottleneck_dim: int = 64  # DINO head output before the prototypes
    head_prototypes: int = 512  # K, the DINO head's prototypes (softmax classes)
    teacher_temp: float = 0.04  # softmax temperature of the teacher's logits
    student_temp: float = 0.1  # softmax temperature of the student's logits

    # --- teacher: lifter, rendering, blending --------------------------------------------------
    lifter: Literal["depth", "mvsplat"] = "depth"  # what predicts the Gaussians: the scenes' depth, or frozen MVSplat
    mvsplat_checkpoint: str | None = None  # required with lifter "mvsplat" (MVSplat's re10k.ckpt)
    blending: float = 1.0  # 1.0 = the "no blending" variant; the with-blending models use 0.5
    resample: Literal["area", "bilinear"] = "area"  # to the patch grid; bilinear = the original
    coverage_threshold: float = 0.5  # smallest area-averaged alpha of a token that counts in the loss
    # "original": align-corners grid (the paper's); "patch_aligned": each pixel takes its patch's
    # token (snd_hf/splatting/upsampling.py), exact at small token grids.
    upsample: Literal["original", "patch_aligned"] = "patch_aligned"
    mask_aware: bool = True  # instance-mask-aware upsampling of the context features (upsample "original" only)
    # Cache the teacher operator's rows of each target view (snd_hf/splatting/operator.py; the lifter
    # is frozen): later visits of a view skip lifting, rendering and the mask operations.
    cache_operator: bool = True
    operator_cache_mb: float = 1024.0  # the cache drops its least recently used target views beyond this

    # --- optimisation ------------------------------------------------------------------------
    learning_rate: float = 3e-4  # peak rate of the schedule
    adam_beta1: float = 0.9  # AdamW
    adam_beta2: float = 0.999  # AdamW
    weight_decay: float = 0.0  # AdamW (0 = the original's Adam)
    warmup_ratio: float = 0.01  # one-cycle cosine schedule (OneCycleLR pct_start)
    max_grad_norm: float | None = None  # the original does not clip
    ema_momentum: float = 0.99  # teacher = momentum * teacher + (1 - momentum) * student
    ema_every: int = 1  # EMA update every N optimizer steps

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))

    # ------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainingConfig:
        """Build from a mapping, rejecting keys that are not fields (``source`` names the origin)."""
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ValueError(f"Unknown training config key(s) in {source}: {cls._name_unknown(unknown)}.")
        return cls(**values)

    @classmethod
    def _name_unknown(cls, unknown: list[str]) -> str:
        """Each unknown key with the closest valid one (a typo, mostly), not all the valid keys."""
        named = []
        for key in unknown:
            close = difflib.get_close_matches(key, cls.keys(), n=1)
            named.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        return ", ".join(named) + " (`python training/train.py --help` lists every key)"

    @classmethod
    def from_yaml(
        cls, path: str | Path, overrides: dict[str, Any] | None = None, config_dir: Path = CONFIG_DIR
    ) -> TrainingConfig:
        path = resolve_config_path(path, config_dir)
        values = read_yaml(path) or {}  # plain data only: a !!python/object tag is one SchemaError
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a mapping of keys to values, got {type(values).__name__}.")
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ValueError(f"Unknown training config key(s) in {path}: {cls._name_unknown(unknown)}.")
        try:
            cls(**values)  # the file's own values first: a wrong or non-finite one names the file
        except ValueError as error:
            raise SchemaError(f"{path}: {error}") from None
        return cls.from_dict({**values, **(overrides or {})}, source=f"{path} or the command line")

    @classmethod
    def from_args(cls, argv: list[str], config_dir: Path = CONFIG_DIR) -> TrainingConfig:
        """Parse ``[--config NAME_OR_PATH] [--key value ...]``; a bare boolean flag means true.

        A config name (``scannetpp_vits14``) is looked up in ``config_dir``.
        """
        config_path, overrides = parse_overrides(argv)
        return cls.from_yaml(config_path or DEFAULT_CONFIG, overrides, config_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> None:
        """Check paths and combinations before any compute; raises ValueError naming the key."""
        if self.dataset == "scannetpp":
            if not self.dataset_path:
                raise ValueError("dataset_path is required with dataset 'scannetpp' (the folder holding scenes/).")
            if not Path(self.dataset_path).exists():
                raise ValueError(f"dataset_path {self.dataset_path!r} does not exist (the ScanNet++ folder holding scenes/).")
            if not (Path(self.dataset_path) / "scenes").is_dir():
                raise ValueError(f"dataset_path {self.dataset_path!r} has no scenes/ folder (expected the ScanNet++ layout).")
        if self.lifter == "mvsplat":
            if not self.mvsplat_checkpoint:
                raise ValueError("mvsplat_checkpoint is required with lifter 'mvsplat' (MVSplat's re10k.ckpt).")
            if not Path(self.mvsplat_checkpoint).is_file():
                raise ValueError(f"mvsplat_checkpoint {self.mvsplat_checkpoint!r} does not exist.")
        if self.init in ("original", "pretrained"):
            if not self.model_path:
                raise ValueError(f"model_path is required with init {self.init!r}.")
            if not Path(self.model_path).exists():
                raise ValueError(f"model_path {self.model_path!r} does not exist.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("hub_model_id is required with push_to_hub (e.g. --hub_model_id user/snd-tiny).")
        if self.report_to not in ("none", "tensorboard", "all"):
            raise ValueError(f"report_to must be 'none', 'tensorboard' or 'all', got {self.report_to!r}.")
        for name in ("synthetic_size", "image_size"):  # checked before any frame is allocated
            size = getattr(self, name)
            if len(size) != 2 or min(size) < 14 or max(size) > MAX_IMAGE_SIDE:
                raise ValueError(f"{name} must be [H, W] with both within [14, {MAX_IMAGE_SIDE}], got {size}.")
        for name in (
            "max_steps", "save_steps", "log_steps", "batch_size", "gradient_accumulation_steps", "ema_every",
            "synthetic_scenes", "synthetic_frames", "num_targets", "lora_r",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("num_workers", "max_skipped_steps", "teacher_temp_warmup_steps", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(
                f"checkpoints_total_limit must be >= 1 (keep the newest N checkpoints) or null (keep all), got "
                f"{self.checkpoints_total_limit}."
            )
        positive = ("learning_rate", "far", "teacher_temp", "student_temp", "lora_alpha")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("near", "weight_decay", "lora_dropout", "coverage_threshold", "adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if not 0.0 <= value <= (math.inf if name in ("near", "weight_decay") else 1.0):
                bounds = ">= 0" if name in ("near", "weight_decay") else "within [0, 1]"
                raise ValueError(f"{name} must be {bounds}, got {value}.")
        if not 0.0 <= self.blending <= 1.0:
            raise ValueError(f"blending must be in [0, 1] (1 = no blending), got {self.blending}.")
        if not 0.0 <= self.ema_momentum <= 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1], got {self.ema_momentum}.")
        if not self.near < self.far:
            raise ValueError(f"near must be smaller than far, got near={self.near}, far={self.far}.")
        if self.center_momentum is not None and not 0.0 <= self.center_momentum < 1.0:
            raise ValueError(f"center_momentum must be in [0, 1) or null (no centring), got {self.center_momentum}.")
        if self.loss != "dino_head" and (self.center_momentum is not None or self.teacher_temp_warmup is not None):
            raise ValueError(
                f"center_momentum and teacher_temp_warmup apply to loss 'dino_head' only, got loss {self.loss!r}."
            )
        if self.contrastive_temperature <= 0:
            raise ValueError(f"contrastive_temperature must be positive, got {self.contrastive_temperature}.")
        if self.operator_cache_mb <= 0:
            raise ValueError(f"operator_cache_mb must be positive, got {self.operator_cache_mb}.")


def resolve_config_path(name_or_path: str | Path, config_dir: Path = CONFIG_DIR) -> Path:
    """A config file path, or the name of one in ``config_dir`` (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (config_dir / path, config_dir / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in config_dir.glob("*.yaml"))
    raise ValueError(f"config {str(name_or_path)!r} not found (a YAML path or one of {names} in {config_dir}).")


def parse_overrides(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Split ``--config X --key value --flag`` into the config path and a dict of YAML-parsed values."""
    bool_keys = {name for name, kind in typing.get_type_hints(TrainingConfig).items() if kind is bool}
    config_path, overrides, i = None, {}, 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ValueError(f"expected a --key, got {token!r} (arguments are --key value pairs).")
        key, has_value, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not has_value:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            elif key in bool_keys:
                value = "true"
            else:
                raise ValueError(f"--{key} needs a value.")
        if key == "config":
            config_path = value
        else:
            overrides[key] = _parse_value(value)
        i += 1
    return config_path, overrides


def _parse_value(text: str) -> Any:
    """YAML scalars and flow lists (``1e-4``, ``true``, ``null``, ``[56,84]``); bare words stay strings."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


class ConfigTypeError(TypeError, ValueError):
    """A config value of the wrong type: a TypeError, and a ValueError like every other bad setting
    (so command lines report it as one line)."""


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Check ``value`` against the annotation ``kind``; ints widen to floats. Raises TypeError."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {list(args)}, got {value!r}.")
        return value
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigTypeError(f"{name} must be a list, got {value!r}.")
        return [_coerce(f"{name}[{i}]", item, args[0]) for i, item in enumerate(value)]
    if kind is float and isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # NaN/inf never start a run (.nan, 1e999 or "nan" on the command line)
            raise ValueError(f"{name} must be a finite number, got {value!r}.")
        return float(value)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigTypeError(f"{name} must be {kind.__name__}, got {value!r} ({type(value).__name__}).")
    return value
