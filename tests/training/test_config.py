"""The training configuration: typed overrides, shipped YAML files, rejected keys and values, required paths."""

from __future__ import annotations

import pytest
import yaml

from snd_hf.training import TrainingConfig


def test_overrides_are_typed_and_bare_bool_flags_mean_true(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("max_steps: 5\nseed: 3\n")
    config = TrainingConfig.from_args(
        ["--config", str(path), "--max_steps", "7", "--learning_rate=2e-5", "--push_to_hub", "--image_size", "[28,42]"]
    )
    assert (config.max_steps, config.seed, config.learning_rate, config.push_to_hub, config.image_size) == (7, 3, 2e-5, True, [28, 42])
    # HfArgumentParser's own forms: dashed names, a list as several values, --no_KEY, an explicit false
    config = TrainingConfig.from_args(["--image-size", "28", "42", "--no_cache_operator", "--push_to_hub", "false"])
    assert (config.image_size, config.cache_operator, config.push_to_hub) == ([28, 42], False, False)


def test_every_shipped_config_loads_and_paper_values_are_kept():
    tiny = TrainingConfig.from_args([])
    assert tiny.dataset == "synthetic" and tiny.init == "pretrained_2d" and tiny.lifter == "depth"
    # The CPU recipe of docs/snd_effect.md.
    recipe = (tiny.loss, tiny.contrastive_temperature, tiny.teacher_mode, tiny.ema_momentum, tiny.ema_every, tiny.max_steps)
    assert recipe == ("info_nce", 0.2, "ema", 0.99, 1, 2000)
    assert (tiny.upsample, tiny.finetune, tiny.segment_mean_weight) == ("patch_aligned", "full", 0.0)
    assert (tiny.batch_size, tiny.num_targets, tiny.context_gap) == (2, 4, 4)  # 8 target views per step
    # The dataclass defaults are the tiny run's: the YAML only adds where its scenes are cached.
    assert tiny == TrainingConfig(dataset_path="data/synthetic-tiny")
    for name in ("scannetpp_vits14", "scannetpp_vitb14"):
        paper = TrainingConfig.from_args(["--config", name])
        assert (paper.learning_rate, paper.lora_r, paper.lora_alpha, paper.lora_dropout) == (2e-5, 8, 8.0, 0.1)
        assert (paper.head_hidden_dim, paper.head_bottleneck_dim, paper.head_prototypes) == (2048, 256, 65536)
        assert (paper.ema_momentum, paper.ema_every, paper.max_steps, paper.segment_mean_weight) == (0.999, 10, 300000, 0.5)
        assert (paper.near, paper.far) == (0.1, 20.0)
        # The paper's objective: DINO head, EMA teacher, LoRA, align-corners upsampling, no centring.
        assert (paper.loss, paper.teacher_mode, paper.finetune, paper.upsample, paper.targets) == (
            "dino_head", "ema", "lora", "original", "splat"
        )
        assert (paper.teacher_temp, paper.student_temp, paper.center_momentum, paper.teacher_temp_warmup) == (1.0, 1.0, None, None)
    assert TrainingConfig.from_args(["--config", "scannetpp_vitb14"]).size == "base"
    original = TrainingConfig.from_args(["--config", "scannetpp_vits14", "--near", "1", "--far", "100"])
    assert (original.near, original.far) == (1.0, 100.0)


def test_unknown_key_wrong_type_and_bad_choice_are_rejected():
    with pytest.raises(ValueError, match=r"Unknown training config key.*'max_step' \(did you mean 'max_steps'\?\) \(`python"):
        TrainingConfig.from_args(["--max_step", "3"])
    with pytest.raises(TypeError, match="max_steps must be int"):
        TrainingConfig.from_args(["--max_steps", "many"])
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        TrainingConfig.from_args(["--mixed_precision", "fp8"])
    with pytest.raises(ValueError, match=r"^argument --max_steps/--max-steps: expected one argument \(`python"):
        TrainingConfig.from_args(["--max_steps"])
    with pytest.raises(ValueError, match="expected a --key, got 'many'"):
        TrainingConfig.from_args(["many"])


def test_earlier_runs_config_yaml_reads_blending_as_segment_mean_weight(tmp_path):
    """A config.yaml written before the rename (resume, `init:RUN_DIR`): blending b is
    segment_mean_weight 1 - b, and the AdamW betas every run had are accepted."""
    earlier = TrainingConfig().to_dict()
    del earlier["segment_mean_weight"]
    path = tmp_path / "config.yaml"
    for blending, weight in ((1.0, 0.0), (0.5, 0.5)):
        path.write_text(yaml.safe_dump({**earlier, "blending": blending, "adam_beta1": 0.9, "adam_beta2": 0.999}))
        assert TrainingConfig.from_yaml(path) == TrainingConfig(segment_mean_weight=weight)
    path.write_text(yaml.safe_dump({"blending": 0.5, "segment_mean_weight": 0.5}))
    with pytest.raises(ValueError, match="sets both blending .* keep segment_mean_weight"):
        TrainingConfig.from_yaml(path)
    path.write_text(yaml.safe_dump({"adam_beta2": 0.95}))
    with pytest.raises(ValueError, match="adam_beta2 is no longer a setting"):
        TrainingConfig.from_yaml(path)
    with pytest.raises(ValueError, match=r"'blending' \(renamed: segment_mean_weight = 1 - blending\)"):
        TrainingConfig.from_args(["--blending", "0.5"])
    path.write_text("segment_mean_weight: 1.5\n")
    with pytest.raises(ValueError, match=r"segment_mean_weight must be within \[0, 1\], got 1.5"):
        TrainingConfig.from_yaml(path).validate()


def test_required_paths_are_checked(tmp_path):
    paper = TrainingConfig.from_args(["--config", "scannetpp_vits14"])
    with pytest.raises(ValueError, match="dataset_path is required"):
        paper.validate()
    (tmp_path / "scenes").mkdir()
    paper = TrainingConfig.from_args(["--config", "scannetpp_vits14", "--dataset_path", str(tmp_path)])
    with pytest.raises(ValueError, match="mvsplat_checkpoint is required"):
        paper.validate()
    missing = TrainingConfig.from_args(
        ["--config", "scannetpp_vits14", "--dataset_path", str(tmp_path), "--mvsplat_checkpoint", "nope.ckpt"]
    )
    with pytest.raises(ValueError, match="mvsplat_checkpoint 'nope.ckpt' does not exist"):
        missing.validate()


def test_yaml_round_trip(tmp_path):
    config = TrainingConfig.from_args(["--max_steps", "9", "--max_grad_norm", "1"])
    path = tmp_path / "run.yaml"
    path.write_text(config.to_yaml())
    assert TrainingConfig.from_yaml(path) == config
    assert config.max_grad_norm == 1.0 and isinstance(config.max_grad_norm, float)


def test_max_context_gap_draws_each_samples_gap_from_the_range(tmp_path):
    from snd_hf.data.synthetic import ensure_synthetic_scenes
    from snd_hf.training.builders import build_dataset

    root = ensure_synthetic_scenes(tmp_path / "rooms", num_scenes=2, num_frames=12, height=32, width=40, progress=False)

    def gaps(**settings) -> list[int]:
        config = TrainingConfig(dataset_path=str(root), image_size=[28, 42], **settings)
        config.validate()
        dataset, drawn = build_dataset(config, root), []
        for epoch in range(20):
            dataset.set_epoch(epoch)
            drawn += [int(dataset[i]["index"]["context"][-1] - dataset[i]["index"]["context"][0]) for i in range(len(dataset))]
        return drawn

    assert set(gaps()) == {4}  # null: the fixed gap
    ranged = gaps(max_context_gap=8)
    assert set(ranged) <= {4, 5, 6, 7, 8} and len(set(ranged)) >= 3
    with pytest.raises(ValueError, match="max_context_gap must be >= context_gap"):
        TrainingConfig(max_context_gap=3).validate()
