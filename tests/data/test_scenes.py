import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from snd_hf.data.sampling import sample_views
from snd_hf.data.scenes import SceneDataset, collate_scenes


def _draws(**kwargs):
    rng = np.random.default_rng(0)
    return [sample_views(12, rng, **kwargs) for _ in range(200)]


def test_sampler_between_targets_lie_within_the_context_span():
    for context, targets in _draws(context_gap=(8, 8), num_targets=2):
        assert context[1] - context[0] == 8
        assert all(context[0] <= t <= context[1] for t in targets)


def test_sampler_draws_the_gap_from_the_whole_range():
    # Deviation from the original, which always used the minimum gap.
    gaps = {context[-1] - context[0] for context, _ in _draws(context_gap=(4, 6))}
    assert gaps == {4, 5, 6}


def test_sampler_novel_targets_lie_outside_within_one_gap():
    seen = set()
    for context, targets in _draws(context_gap=(5, 5), target_mode="novel", num_targets=1):
        (target,) = targets
        assert target < context[0] or target > context[-1]
        assert context[0] - 5 <= target <= context[-1] + 5
        seen.add(target < context[0])
    assert seen == {True, False}


def test_sampler_spreads_more_context_views_and_checks_frames():
    for context, _ in _draws(num_context=3, context_gap=(8, 8)):
        assert [c - context[0] for c in context] == [0, 4, 8]
    with pytest.raises(ValueError, match="num_frames"):
        sample_views(8, np.random.default_rng(0), context_gap=(8, 8))


def test_sample_layout_matches_the_scene_batch_contract(tiny_scenes):
    dataset = SceneDataset(tiny_scenes, num_targets=2)
    sample = dataset[1]
    assert sample["scene"] == "synth_0001"
    context, target = sample["context"], sample["target"]
    assert context["image"].shape == (2, 3, 48, 64) and context["image"].dtype == torch.float32
    assert 0 <= context["image"].min() and context["image"].max() <= 1
    assert context["mask"].shape == (2, 48, 64) and context["mask"].dtype == torch.int64
    assert context["depth"].shape == (2, 48, 64) and context["normals"].shape == (2, 3, 48, 64)
    assert context["semantics"].dtype == torch.int64
    assert target["image"].shape == (2, 3, 48, 64)
    torch.testing.assert_close(context["near"], torch.full((2,), 0.1))
    torch.testing.assert_close(target["far"], torch.full((2,), 20.0))
    scene = dataset.scenes[1]
    for position, extrinsics in zip(sample["index"]["context"].tolist(), context["extrinsics"]):
        assert torch.equal(extrinsics, scene.frames[position].extrinsics)

    batch = collate_scenes([dataset[0], dataset[1]])
    assert batch["scene"] == ["synth_0000", "synth_0001"]
    assert batch["context"]["image"].shape == (2, 2, 3, 48, 64)
    assert batch["target"]["intrinsics"].shape == (2, 2, 3, 3)
    assert batch["index"]["context"].shape == (2, 2) and batch["index"]["target"].shape == (2, 2)


def test_resizing_keeps_labels_and_normalised_intrinsics(tiny_scenes):
    native = SceneDataset(tiny_scenes)[0]
    small = SceneDataset(tiny_scenes, image_size=(24, 32))[0]
    assert small["context"]["image"].shape == (2, 3, 24, 32)
    assert torch.equal(small["context"]["mask"], native["context"]["mask"][:, 1::2, 1::2])  # nearest, exact 2x
    assert torch.equal(small["context"]["intrinsics"], native["context"]["intrinsics"])
    torch.testing.assert_close(small["context"]["image"].mean(), native["context"]["image"].mean(), atol=0.01, rtol=0)


def test_draws_depend_only_on_seed_epoch_and_index(tiny_scenes):
    dataset = SceneDataset(tiny_scenes, samples_per_scene=8, fields=())
    first = [dataset[i]["index"]["target"].tolist() for i in range(len(dataset))]
    again = SceneDataset(tiny_scenes, samples_per_scene=8, fields=())
    assert [again[i]["index"]["target"].tolist() for i in reversed(range(len(again)))][::-1] == first
    dataset.set_epoch(1)
    assert [dataset[i]["index"]["target"].tolist() for i in range(len(dataset))] != first
    dataset.set_epoch(0)
    assert [dataset[i]["index"]["target"].tolist() for i in range(len(dataset))] == first
    other = SceneDataset(tiny_scenes, samples_per_scene=8, fields=(), seed=1)
    assert [other[i]["index"]["target"].tolist() for i in range(len(other))] != first


def test_dataloader_workers_give_the_same_batches(tiny_scenes):
    dataset = SceneDataset(tiny_scenes, samples_per_scene=2, fields=())
    serial = list(DataLoader(dataset, batch_size=2, collate_fn=collate_scenes))
    parallel = list(DataLoader(dataset, batch_size=2, collate_fn=collate_scenes, num_workers=2))
    for left, right in zip(serial, parallel, strict=True):
        assert torch.equal(left["context"]["image"], right["context"]["image"])
        assert torch.equal(left["index"]["target"], right["index"]["target"])


def test_invalid_arguments_are_named(tiny_scenes):
    for kwargs, name in [
        ({"context_gap": (5, 3)}, "context_gap"),
        ({"num_context": 1}, "num_context"),
        ({"target_mode": "far"}, "target_mode"),
        ({"fields": ("flow",)}, "fields"),
        ({"near": 5.0, "far": 1.0}, "near"),
        ({"image_size": (0, 4)}, "image_size"),
    ]:
        with pytest.raises(ValueError, match=name):
            SceneDataset(tiny_scenes, **kwargs)
    with pytest.raises(ValueError, match="different context fields"):
        collate_scenes([SceneDataset(tiny_scenes)[0], SceneDataset(tiny_scenes, fields=())[1]])
    with pytest.raises(ValueError, match="set `image_size`"):
        collate_scenes([SceneDataset(tiny_scenes)[0], SceneDataset(tiny_scenes, image_size=(24, 32))[1]])
