"""The training configuration: one typed, flat dataclass, read from YAML and ``--key value`` flags.

Like nanoGPT's configurator, a run is ``defaults ← config file ← command line``; unlike it, every
key is checked against :class:`TrainingConfig` and an unknown key, a value of the wrong type or a
missing required path is rejected *before* any data is generated or any model is built. The
command line is transformers' ``HfArgumentParser`` over the dataclass (each field's
``metadata["help"]`` is its ``--help`` line), with ``--config NAME_OR_PATH`` for the file.

Earlier runs' ``config.yaml`` files still load (resume, ``snd eval --model init:RUN_DIR``):
``blending: b`` (the weight of a pixel's own features, 1.0 = none) reads as
``segment_mean_weight: 1 - b``, and ``adam_beta1``/``adam_beta2`` are accepted at AdamW's
defaults (0.9, 0.999), the only values they ever had (:data:`LEGACY_KEYS`).

Example::

    config = TrainingConfig.from_args(["--config", "training/configs/synthetic_tiny.yaml", "--max_steps", "20"])
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml
from transformers import HfArgumentParser

from snd_hf.schema import MAX_IMAGE_SIDE, SchemaError, read_yaml

# Shipped configs, in a source checkout (train.py passes its own folder's configs/ explicitly).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "training" / "configs"
DEFAULT_CONFIG = "synthetic_tiny"
# Keys of earlier runs' config.yaml files -> how they read now (`_upgrade_legacy_keys`).
LEGACY_KEYS = {
    "blending": "renamed: segment_mean_weight = 1 - blending",
    "adam_beta1": "no longer a setting: AdamW uses torch's betas (0.9, 0.999)",
    "adam_beta2": "no longer a setting: AdamW uses torch's betas (0.9, 0.999)",
}
_FIXED_BETAS = {"adam_beta1": 0.9, "adam_beta2": 0.999}


@dataclass
class TrainingConfig:
    """Every setting of an SnD training run (the defaults are the tiny synthetic run's).

    Paper values (ORIGINAL.md, "Optimisation") are in ``training/configs/scannetpp_vit{s,b}14.yaml``.
    The defaults are the CPU recipe of docs/snd_effect.md: a tiny ViT
    2D-pretrained by ``training/pretrain_2d.py``, dense InfoNCE on the backbone tokens against an
    EMA teacher (0.99 every step), patch-aligned upsampling, no blending, full fine-tuning.
    Each field's ``metadata["help"]`` is its ``--help`` line (transformers' ``HfArgumentParser``).
    """

    # --- run ---------------------------------------------------------------------------------
    output_dir: str = field(default="outputs/snd-synthetic-tiny", metadata={"help": "checkpoints, losses.jsonl, the final student"})
    seed: int = field(default=0, metadata={"help": "model init, data order and dropout"})
    max_steps: int = field(default=2000, metadata={"help": "optimizer steps"})
    save_steps: int = field(default=500, metadata={"help": "full-state checkpoint (and native export) every N steps, and at the end"})
    log_steps: int = field(default=1, metadata={"help": "per-step losses go to output_dir/losses.jsonl; trackers every N steps"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": 'a checkpoint directory or "latest"'})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "keep only the newest N complete checkpoints"})
    report_to: str = field(default="none", metadata={"help": '"none", "tensorboard", "all" (accelerate trackers)'})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(default="no", metadata={"help": "accelerate autocast (fp16 adds loss scaling)"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    push_to_hub: bool = field(default=False, metadata={"help": "upload the final student (access is checked before training)"})
    hub_model_id: str | None = field(default=None, metadata={"help": "the Hub repository, user/name (required with push_to_hub)"})
    hub_private: bool = field(default=False, metadata={"help": "create the Hub repository as private"})

    # --- reliability: reused folders, NaN/inf ---------------------------------------------------
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "start again in a non-empty output_dir (removes its earlier run's outputs)"}
    )
    on_nonfinite: Literal["stop", "skip"] = field(
        default="stop", metadata={"help": "a NaN/inf loss or gradient: stop the run, or skip that step"}
    )
    max_skipped_steps: int = field(default=10, metadata={"help": 'with on_nonfinite "skip": stop once more steps than this were skipped'})

    # --- data --------------------------------------------------------------------------------
    dataset: Literal["synthetic", "scannetpp"] = field(
        default="synthetic", metadata={"help": "generated rooms, or a ScanNet++ folder (dataset_path)"}
    )
    dataset_path: str | None = field(default=None, metadata={"help": "scannetpp: root holding scenes/ (required); synthetic: cache dir"})
    synthetic_scenes: int = field(default=16, metadata={"help": "rooms to generate"})
    synthetic_frames: int = field(default=12, metadata={"help": "frames per generated room"})
    synthetic_size: list[int] = field(default_factory=lambda: [84, 112], metadata={"help": "generated (H, W)"})
    image_size: list[int] = field(default_factory=lambda: [84, 112], metadata={"help": "training (H, W): a 6x8 token grid"})
    context_gap: int = field(default=4, metadata={"help": "frames between the two context views"})
    # Deviation (docs/deviations.md, 9): the original meant a (min, max) range but always draws the min.
    max_context_gap: int | None = field(
        default=None, metadata={"help": "largest gap: each sample draws one in [context_gap, max_context_gap] (null: always context_gap)"}
    )
    # Deviation (views per sample, CPU recipe): the original draws 1 target per context pair; 4 here
    # (batch 2: the same 8 target views per step, the teacher runs on 4 context views, not 16).
    num_targets: int = field(default=4, metadata={"help": "target views per sample, between the context views (the original: 1)"})
    target_mode: Literal["between", "inside"] = field(
        default="between",
        metadata={
            "help": '"between" (the original: inclusive, a target may be a context frame) or "inside" (never a context'
            " frame: every sample carries geometry)"
        },
    )
    # Deviation (data: near/far): the original used 1 / 100 (RE10K values).
    near: float = field(default=0.1, metadata={"help": "near plane in metres (the original: 1)"})
    far: float = field(default=20.0, metadata={"help": "far plane in metres (the original: 100)"})
    batch_size: int = field(default=2, metadata={"help": "samples (context pairs) per process per micro-batch"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    cache_views: bool = field(
        default=True, metadata={"help": "keep decoded views in memory (snd_hf/data/memory.py): small datasets only"}
    )

    # --- model -------------------------------------------------------------------------------
    init: Literal["random", "original", "pretrained", "pretrained_2d"] = field(
        default="pretrained_2d",
        metadata={
            "help": 'the starting backbone (see model_path); "pretrained_2d": the packaged tiny ViT of training/pretrain_2d.py'
            " (snd_hf/assets/pretrained_2d), a 2D self-supervised stand-in for DINOv2, which is not reachable offline"
        },
    )
    model_path: str | None = field(default=None, metadata={"help": '"original": a torch.hub-layout .pth; "pretrained": an SnD dir'})
    size: Literal["small", "base"] | None = field(default=None, metadata={"help": "records the published variant in the config"})
    hidden_size: int = field(default=48, metadata={"help": "width of a random init (ignored otherwise)"})
    num_hidden_layers: int = field(default=2, metadata={"help": "layers of a random init"})
    num_attention_heads: int = field(default=3, metadata={"help": "attention heads of a random init"})
    finetune: Literal["lora", "full"] = field(
        default="full", metadata={"help": "train LoRA adapters (the paper) or every backbone weight"}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=8.0, metadata={"help": "LoRA scale numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input"})
    lora_targets: list[str] = field(
        default_factory=lambda: ["qkv", "proj", "projection"],
        metadata={
            "help": "module name suffixes LoRA adapts; the original's suffix match on qkv/proj also caught"
            ' patch_embed.proj, named "projection" here'
        },
    )

    # --- objective (snd_hf/training/loss.py; sources there) -------------------------------------
    loss: Literal["dino_head", "cosine", "mse", "info_nce"] = field(default="info_nce", metadata={"help": 'the paper: "dino_head"'})
    contrastive_temperature: float = field(default=0.2, metadata={"help": "info_nce: softmax temperature over cosine similarities"})
    same_segment_negatives: bool = field(
        default=True, metadata={"help": "info_nce: the other tokens of a token's instance segment (same view) among its negatives"}
    )
    teacher_mode: Literal["ema", "frozen"] = field(
        default="ema", metadata={"help": "EMA of the student (ema_momentum, ema_every), or the start"}
    )
    targets: Literal["splat", "self_distillation", "cross_view_copy"] = field(
        default="splat",
        metadata={
            "help": 'what the student distils: "splat" is SnD; the other two are geometry-free controls with the same'
            " compute: the teacher's own tokens of the target view (self_distillation), or the nearer context view's"
            " tokens at the same grid positions (cross_view_copy)"
        },
    )
    center_momentum: float | None = field(
        default=None, metadata={"help": "dino_head: DINO centring of the teacher logits (DINO: 0.9); SnD: none"}
    )
    teacher_temp_warmup: float | None = field(
        default=None, metadata={"help": "dino_head: DINO's starting teacher temperature (0.04), rising to teacher_temp"}
    )
    teacher_temp_warmup_steps: int = field(default=0, metadata={"help": "dino_head: the steps of that linear rise"})
    sinkhorn_iterations: int = field(
        default=0, metadata={"help": "dino_head: Sinkhorn-Knopp centring of the teacher in place of its softmax (DINOv2: 3); 0 = off"}
    )
    koleo_weight: float = field(
        default=0.0, metadata={"help": "weight of the KoLeo regulariser on the student's covered tokens (DINOv2: 0.1); 0 = off"}
    )

    # --- DINO heads (loss "dino_head") ----------------------------------------------------------
    head_hidden_dim: int = field(default=128, metadata={"help": "DINO head MLP width"})
    head_bottleneck_dim: int = field(default=64, metadata={"help": "DINO head output before the prototypes"})
    head_prototypes: int = field(default=512, metadata={"help": "K, the DINO head's prototypes (softmax classes)"})
    teacher_temp: float = field(default=0.04, metadata={"help": "softmax temperature of the teacher's logits"})
    student_temp: float = field(default=0.1, metadata={"help": "softmax temperature of the student's logits"})

    # --- teacher: lifter, rendering, blending --------------------------------------------------
    lifter: Literal["depth", "mvsplat"] = field(
        default="depth", metadata={"help": "what predicts the Gaussians: the scenes' depth, or frozen MVSplat"}
    )
    mvsplat_checkpoint: str | None = field(default=None, metadata={"help": "required with lifter mvsplat (MVSplat's re10k.ckpt)"})
    segment_mean_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of its instance segment's mean in each rendered target pixel (the rest is the pixel's own"
            " features): 0 = no blending; the with-blending models use 0.5. Replaces `blending` (= 1 - this)"
        },
    )
    resample: Literal["area", "bilinear"] = field(default="area", metadata={"help": "to the patch grid; bilinear = the original"})
    coverage_threshold: float = field(
        default=0.5, metadata={"help": "smallest area-averaged alpha of a token that counts in the loss"}
    )
    upsample: Literal["original", "patch_aligned"] = field(
        default="patch_aligned",
        metadata={
            "help": "original: the align-corners grid (the paper's); patch_aligned: each pixel takes its patch's token"
            " (snd_hf/splatting/upsampling.py), exact at small token grids"
        },
    )
    mask_aware: bool = field(
        default=True, metadata={"help": 'instance-mask-aware upsampling of the context features (upsample "original" only)'}
    )
    cache_operator: bool = field(
        default=True,
        metadata={
            "help": "cache the teacher operator's rows of each target view (snd_hf/splatting/teacher/; the lifter is"
            " frozen): later visits of a view skip lifting, rendering and the mask operations"
        },
    )
    operator_cache_mb: float = field(
        default=1024.0, metadata={"help": "size of that cache in MiB: it drops its least recently used target views beyond this"}
    )

    # --- optimisation (AdamW with torch's betas, 0.9 and 0.999) ---------------------------------
    learning_rate: float = field(default=3e-4, metadata={"help": "peak rate of the schedule"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW (0 = the original's Adam)"})
    warmup_ratio: float = field(default=0.01, metadata={"help": "one-cycle cosine schedule (OneCycleLR pct_start)"})
    max_grad_norm: float | None = field(default=None, metadata={"help": "gradient clipping; the original does not clip"})
    ema_momentum: float = field(default=0.99, metadata={"help": "teacher = momentum * teacher + (1 - momentum) * student"})
    ema_every: int = field(default=1, metadata={"help": "EMA update every N optimizer steps"})

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
        """Build from a mapping, rejecting keys that are not fields (``source`` names the origin);
        the keys of earlier runs (:data:`LEGACY_KEYS`) are read as their replacements."""
        values = _upgrade_legacy_keys(values, source)
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
            if key in LEGACY_KEYS:  # a key of earlier runs, given on the command line
                named.append(f"{key!r} ({LEGACY_KEYS[key]})")
            else:
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
        values = _upgrade_legacy_keys(values, str(path))
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
        """Parse ``[--config NAME_OR_PATH] [--key value ...]`` (:class:`TrainingArgumentParser`).

        A config name (``scannetpp_vits14``) is looked up in ``config_dir``.
        """
        return TrainingArgumentParser(config_dir=config_dir).parse(argv)

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
            "synthetic_scenes", "synthetic_frames", "num_targets", "lora_r", "context_gap",
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
        for name in ("near", "weight_decay", "lora_dropout", "coverage_threshold", "segment_mean_weight"):
            value = getattr(self, name)
            if not 0.0 <= value <= (math.inf if name in ("near", "weight_decay") else 1.0):
                bounds = ">= 0" if name in ("near", "weight_decay") else "within [0, 1]"
                raise ValueError(f"{name} must be {bounds}, got {value}.")
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
        if self.sinkhorn_iterations < 0 or (self.sinkhorn_iterations and self.loss != "dino_head"):
            raise ValueError(f"sinkhorn_iterations must be >= 0 and applies to loss 'dino_head' only, got {self.sinkhorn_iterations}.")
        if self.sinkhorn_iterations and self.center_momentum is not None:
            raise ValueError("sinkhorn_iterations and center_momentum are two centrings of the teacher: set one of them.")
        if not 0.0 <= self.koleo_weight < math.inf:
            raise ValueError(f"koleo_weight must be a finite number >= 0, got {self.koleo_weight}.")
        if not self.same_segment_negatives and self.loss != "info_nce":
            raise ValueError(f"same_segment_negatives applies to loss 'info_nce' only, got loss {self.loss!r}.")
        if self.max_context_gap is not None and not self.context_gap <= self.max_context_gap:
            raise ValueError(
                f"max_context_gap must be >= context_gap ({self.context_gap}) or null, got {self.max_context_gap}."
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


def _upgrade_legacy_keys(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` with the keys of earlier runs (:data:`LEGACY_KEYS`) read as they are now: ``blending: b``
    as ``segment_mean_weight: 1 - b`` (exact for the values runs used, 1.0 and 0.5), the AdamW betas
    dropped when they are the values every run had.

    Raises:
        ValueError: ``blending`` beside ``segment_mean_weight``, or betas other than (0.9, 0.999).
    """
    values = dict(values)
    if "blending" in values:
        if "segment_mean_weight" in values:
            raise ValueError(f"{source} sets both blending (the earlier name) and segment_mean_weight: keep segment_mean_weight.")
        blending = values.pop("blending")
        if isinstance(blending, bool) or not isinstance(blending, (int, float)):
            raise ValueError(f"{source}: blending must be a number in [0, 1] (now segment_mean_weight = 1 - blending), got {blending!r}.")
        values["segment_mean_weight"] = 1.0 - blending
    for name, fixed in _FIXED_BETAS.items():
        if name in values and values.pop(name) != fixed:
            raise ValueError(f"{source}: {name} is {LEGACY_KEYS[name]}; this run set another value.")
    return values


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


class _OneSpellingFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each key once, as ``--snake_case``: the ``--kebab-case`` spelling that
    ``HfArgumentParser`` adds beside it is still accepted, only not listed."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        spellings = action.option_strings
        kebab = {name for name in spellings if "-" in name[2:] and f"--{name[2:].replace('-', '_')}" in spellings}
        if kebab:
            action = copy.copy(action)
            action.option_strings = [name for name in spellings if name not in kebab]
        return super()._format_action_invocation(action)


class TrainingArgumentParser(HfArgumentParser):
    """``[--config NAME_OR_PATH] [--KEY VALUE ...]``: transformers' ``HfArgumentParser`` over
    :class:`TrainingConfig` (one option per field, ``--help`` from the fields' ``metadata["help"]``,
    ``--key-name`` aliases, accepted but not listed, a bare boolean flag meaning true, ``--no_KEY``
    for the ones that default to true), plus ``--config``.

    Values are read as YAML scalars and flow lists (``1e-4``, ``null``, ``[28,42]``; a list also as
    ``--image_size 28 42``) and checked by :class:`TrainingConfig` itself, so the file and the command
    line give the same one-line errors; an unknown key is named with the closest valid one. Only the
    keys given on the command line override the file (``defaults ← config file ← command line``).
    """

    def __init__(self, prog: str = "training/train.py", description: str | None = None, config_dir: Path = CONFIG_DIR):
        shipped = ", ".join(sorted(path.stem for path in config_dir.glob("*.yaml")))
        super().__init__(
            TrainingConfig,
            prog=prog,
            usage=f"python {prog} [--config NAME_OR_PATH] [--KEY VALUE ...]\n"
            f"       accelerate launch [LAUNCH OPTIONS] {prog} [--config NAME_OR_PATH] [--KEY VALUE ...]",
            description=description,
            epilog="Values: a bare --FLAG means true; lists as [a,b] or a b; null for none. Defaults are those of a plain"
            f" run (the default config, {DEFAULT_CONFIG}).",
            allow_abbrev=False,  # --max_step is a typo to name, not max_steps
            formatter_class=_OneSpellingFormatter,
        )
        self.config_dir = config_dir
        self.add_argument(
            "--config",
            default=DEFAULT_CONFIG,
            metavar="NAME_OR_PATH",
            help=f"a YAML file of settings, or one of the shipped configs ({shipped}); the command line overrides it",
        )
        plain = TrainingConfig.from_yaml(DEFAULT_CONFIG, config_dir=config_dir)
        for action in self._actions:
            if action.dest not in TrainingConfig.keys():
                continue
            if action.nargs != 0:  # not --no_KEY
                if action.choices:
                    action.metavar = "{" + ",".join(map(str, action.choices)) + "}"
                action.type, action.choices = _parse_value, None  # TrainingConfig checks values and choices
                action.help = f"{action.help} (default: {_shown(getattr(plain, action.dest))})".replace("%", "%%")
            else:  # HfArgumentParser repeats the key's own help, which reads as its opposite
                action.help = f"set {action.dest} to false"
            action.default = argparse.SUPPRESS  # absent keys keep the file's value

    def error(self, message: str) -> NoReturn:
        """One line (a ValueError) instead of argparse's usage and exit."""
        raise ValueError(f"{message} (`python {self.prog} --help` lists every key).")

    def parse(self, argv: list[str]) -> TrainingConfig:
        """The config of ``argv``: the defaults, then the ``--config`` file, then the given keys."""
        return self.parse_with_recipe(argv)[0]

    def parse_with_recipe(self, argv: list[str]) -> tuple[TrainingConfig, Path]:
        """:meth:`parse`, and the config file the run starts from (``--config``, resolved): the
        recipe the command line changes."""
        namespace, remaining = self.parse_known_args(argv)
        if remaining:
            keys = [token[2:].partition("=")[0].replace("-", "_") for token in remaining if token.startswith("--")]
            if not keys:
                raise ValueError(f"expected a --key, got {remaining[0]!r} (arguments are --key value pairs).")
            raise ValueError(f"Unknown training config key(s) in the command line: {TrainingConfig._name_unknown(sorted(keys))}.")
        given = vars(namespace)
        recipe = resolve_config_path(given.pop("config"), self.config_dir)
        for name, value in given.items():  # --image_size [28,42] arrives as [[28, 42]]
            if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
                given[name] = value[0]
        return TrainingConfig.from_yaml(recipe, given, self.config_dir), recipe


def _shown(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
