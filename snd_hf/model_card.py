"""Model cards for SnD checkpoints trained with snd-hf (the card of the published weights is
``model_cards/README.md``).

``build_model_card`` renders Hub model-card text: YAML front matter (library, pipeline tag, license,
base model, datasets, tags) and a body filled from ``snd_hf/assets/model_card_template.md``, in the
sections of the published card: the variant and what it is for, how to load it (and that `import
snd_hf` is what lets transformers' Auto classes read it), the architecture, the training data and
configuration, the number of steps, an evaluation table when given, limitations and the citation.
Every path that writes a model writes it as ``README.md`` beside the weights: ``save_pretrained``
(so the trainer's export and `snd convert`), ``push_to_hub`` and the trainer's upload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template
from typing import Any

import yaml

from .configuration_snd import SnDConfig

TEMPLATE = Path(__file__).resolve().parent / "assets" / "model_card_template.md"
TAGS = ["snd", "splat-and-distill", "dinov2", "3d-aware", "dense-features", "vision"]
# The Hub shows ready-made loading snippets only for the libraries it knows; snd-hf is not one, so
# the card's own "How to load" section says it (library_name still groups SnD models on the Hub).
LIBRARY_NAME = "snd-hf"
DATASET_IDS = {"scannetpp": "scannetpp"}  # training_config["dataset"] -> Hub `datasets` entry
SIZE_NAMES = {"small": "ViT-S/14", "base": "ViT-B/14"}
SND_SUMMARY = (
    "An SnD (Splat and Distill) student made with the `snd-hf` package: a DINOv2-architecture ViT\n"
    "whose features were distilled from 3D-lifted, splatted teacher features."
)


def card_metadata(config: SnDConfig, training_config: Mapping[str, Any]) -> dict[str, Any]:
    """The YAML front matter of a trained checkpoint's card."""
    metadata: dict[str, Any] = {
        "library_name": LIBRARY_NAME,
        "pipeline_tag": "image-feature-extraction",
        "license": "mit",
        "tags": list(TAGS),
    }
    if training_config.get("init") in ("original", None) and config.size in SIZE_NAMES:
        metadata["base_model"] = f"facebook/dinov2-{config.size}"
    dataset = training_config.get("dataset")
    if dataset in DATASET_IDS:
        metadata["datasets"] = [DATASET_IDS[dataset]]
    elif dataset is not None:
        metadata["tags"].append(f"{dataset}-data")
    return metadata


def _variant_line(config: SnDConfig, training_config: Mapping[str, Any]) -> str:
    size = f"{SIZE_NAMES[config.size]} (`size=\"{config.size}\"`)" if config.size in SIZE_NAMES else f"a custom size ({config.hidden_size} channels, {config.num_hidden_layers} layers)"
    coefficient = training_config.get("blending")
    if config.blending is None:
        blending = "blending not recorded"
    elif config.blending:
        blending = "with segment blending" + (f" (coefficient {coefficient})" if coefficient is not None else "")
        blending += ": for dense prediction (segmentation, depth, normals)"
    else:
        blending = "without blending: for multi-view correspondence"
    return f"Variant: {size}, trained {blending}."


def _initialisation(training_config: Mapping[str, Any]) -> str:
    init, path = training_config.get("init"), training_config.get("model_path")
    source = f" (`{Path(path).name}`)" if path else ""
    return {
        "random": "random (standard DINOv2 initialisation)",
        "original": f"original torch.hub DINOv2 weights{source}",
        "pretrained": f"an SnD checkpoint{source}",
        "pretrained_2d": "the packaged 2D-pretrained tiny ViT (`snd_hf/assets/pretrained_2d`, training/pretrain_2d.py)",
    }.get(init, f"`{init}`" if init else "not recorded (the checkpoint's config.json has no training_info)")


def _finetuning(training_config: Mapping[str, Any]) -> str:
    if training_config.get("finetune") == "full":
        return "all parameters"
    if training_config.get("finetune") == "lora":
        targets = ", ".join(f"`{name}`" for name in training_config.get("lora_targets", []))
        return (
            f"LoRA rank {training_config.get('lora_r')}, alpha {training_config.get('lora_alpha')}, dropout"
            f" {training_config.get('lora_dropout')} on {targets or 'the attention projections'}; merged into"
            " the weights"
        )
    return "not recorded"


def _data(training_config: Mapping[str, Any]) -> str:
    dataset = training_config.get("dataset")
    size = training_config.get("image_size")
    at = f", trained at {size[0]}x{size[1]} pixels" if isinstance(size, (list, tuple)) and len(size) == 2 else ""
    if dataset == "synthetic":
        return (
            f"procedural synthetic indoor scenes ({training_config.get('synthetic_scenes')} scenes x"
            f" {training_config.get('synthetic_frames')} frames){at}"
        )
    if dataset == "scannetpp":
        path = training_config.get("dataset_path")
        return f"ScanNet++ scenes{f' from `{Path(path).name}`' if path else ''}{at}"
    return f"{dataset}{at}" if dataset else "not recorded"


def _teacher(training_config: Mapping[str, Any]) -> str:
    parts = []
    if "lifter" in training_config:
        parts.append(f"{training_config['lifter']} lifter")
    if "segment_mean_weight" in training_config:
        parts.append(f"segment-mean weight {training_config['segment_mean_weight']} (0 = no blending)")
    elif "blending" in training_config:  # runs before segment_mean_weight (= 1 - blending)
        parts.append(f"blending coefficient {training_config['blending']} (1 = no blending)")
    if "mask_aware" in training_config:
        parts.append("mask-aware upsampling" if training_config["mask_aware"] else "bilinear upsampling")
    if "ema_momentum" in training_config:
        parts.append(f"EMA momentum {training_config['ema_momentum']} every {training_config.get('ema_every', 1)} step(s)")
    return ", ".join(parts) if parts else "not recorded"


def _evaluation(eval_results: Mapping[str, Mapping[str, float]] | None) -> str:
    if not eval_results:
        return "Not evaluated yet: `snd eval` probes depth, normals, segmentation and correspondence."
    rows = ["| task | metric | value |", "| --- | --- | --- |"]
    for task, metrics in eval_results.items():
        if not isinstance(metrics, Mapping):
            raise TypeError(f"eval_results[{task!r}] must map metric names to values, got {type(metrics).__name__}")
        rows += [f"| {task} | {metric} | {value:.4g} |" for metric, value in metrics.items()]
    return "\n".join(rows)


def _limitations(training_config: Mapping[str, Any]) -> str:
    if training_config.get("dataset") == "synthetic":
        return (
            "Trained on small procedural synthetic scenes only: a demonstration and test checkpoint, not a"
            " substitute for the published SnD weights (`david-shavin/SnD`)."
        )
    return (
        "Trained on indoor scenes: gains are expected on indoor imagery; outdoor and object-centric images"
        " were not part of fine-tuning. Features keep the 14-pixel patch resolution."
    )


def build_model_card(
    config: SnDConfig,
    training_config: Mapping[str, Any] | None = None,
    steps: int | None = None,
    eval_results: Mapping[str, Mapping[str, float]] | None = None,
    repo_id: str | None = None,
    tags: Sequence[str] = (),
    overrides: Mapping[str, str] | None = None,
) -> str:
    """Render the Hub model card (YAML front matter + markdown body) of a trained SnD checkpoint.

    Args:
        config: the checkpoint's ``SnDConfig`` (architecture, ``size``, ``blending``).
        training_config: the trainer's configuration as a plain mapping (``TrainingConfig.to_dict()``);
            its data, initialisation, fine-tuning and teacher settings are summarised and dumped in full.
        steps: optimizer steps trained.
        eval_results: task -> metric -> value (e.g. ``{"depth": {"rmse": 0.41}}``), shown as a table.
        repo_id: the Hub repo the card is for, used in the loading snippet.
        tags: Hub tags added to the package's own.
        overrides: fields of the card's template to write instead of those of an SnD student (e.g.
            ``summary``, the opening paragraph; ``variant_line``; ``teacher``), for a model made otherwise.
    Returns:
        the card text, starting with ``---`` front matter.
    """
    if not isinstance(config, SnDConfig):
        raise TypeError(f"config must be an SnDConfig, got {type(config).__name__}")
    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    training_config = dict(training_config or {})
    metadata = card_metadata(config, training_config)
    metadata["tags"] += [tag for tag in tags if tag not in metadata["tags"]]
    front_matter = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    training_yaml = yaml.safe_dump(training_config, sort_keys=True) if training_config else "# not recorded\n"
    name = repo_id.split("/")[-1] if repo_id else f"SnD {SIZE_NAMES.get(config.size, 'student')}"
    fields = dict(
        title=name,
        summary=SND_SUMMARY,
        variant_line=_variant_line(config, training_config),
        repo_id=repo_id or "path/to/this/checkpoint",
        hidden_size=config.hidden_size,
        patch_size=config.patch_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        grid=config.grid_size,
        image_size=config.image_size,
        initialisation=_initialisation(training_config),
        finetuning=_finetuning(training_config),
        data=_data(training_config),
        teacher=_teacher(training_config),
        steps=steps if steps is not None else "not recorded",
        training_yaml=training_yaml,
        evaluation=_evaluation(eval_results),
        limitations=_limitations(training_config),
    )
    unknown = set(overrides or {}) - set(fields)
    if unknown:
        raise ValueError(f"overrides must name fields of the card's template {sorted(fields)}, got {sorted(unknown)}")
    body = Template(TEMPLATE.read_text()).substitute({**fields, **(overrides or {})})
    return f"---\n{front_matter}---\n\n{body}"


def written_by_snd_hf(card: str) -> bool:
    """Whether ``card`` (README.md text) is one this module wrote (its front matter names the library)."""
    return bool(card.startswith("---\n") and f"\nlibrary_name: {LIBRARY_NAME}\n" in card.split("\n---\n", 1)[0] + "\n")


def model_card_of(config: SnDConfig, repo_id: str | None = None, tags: Sequence[str] = ()) -> str:
    """The card of the checkpoint ``config`` describes: its ``training_info`` (the trainer's
    configuration and step, recorded in config.json) fills the training sections."""
    info = config.training_info or {}
    if info.get("role") == "pretrained_2d":  # training/pretrain_2d.py records its arguments, not a trainer's configuration
        args = dict(info.get("args") or {})
        facts = {"init": "random", "finetune": "full", "dataset": "synthetic", "synthetic_scenes": args.get("scenes"),
                 "synthetic_frames": args.get("frames")}  # fmt: skip
        summary = (
            "A DINOv2-architecture ViT pre-trained by `training/pretrain_2d.py` of the `snd-hf` package with a purely 2D\n"
            f"objective ({info.get('objective', 'not recorded')}) on single generated images: the offline stand-in for\n"
            "DINOv2 that the CPU SnD recipe starts from (`init: pretrained_2d`). It is not distilled with SnD."
        )
        overrides = {
            "summary": summary,
            "variant_line": f"Variant: a custom size ({config.hidden_size} channels, {config.num_hidden_layers} layers), 2D-pretrained:"
            " no SnD training, so no blending variant.",
            "teacher": "none: two augmented crops of one image, positives from the crop geometry (no depth, poses or second view)",
        }
        return build_model_card(config, {**facts, **args}, steps=args.get("steps"), repo_id=repo_id, tags=tags, overrides=overrides)
    return build_model_card(config, training_config=info.get("config"), steps=info.get("step"), repo_id=repo_id, tags=tags)


__all__ = ["build_model_card", "card_metadata", "model_card_of", "written_by_snd_hf"]
