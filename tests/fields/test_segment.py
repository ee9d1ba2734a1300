"""Click selection, highlight masks and edits, on a field distilled from exact instance features."""

from __future__ import annotations

import pytest
import torch

from types import SimpleNamespace

import scipy.sparse

from snd_hf.fields.evaluate import click_for_object, iou, matched_iou, specular_sensitivity
from snd_hf.fields.features import CallableFeatures, WithColour
from snd_hf.cameras import Cameras
from snd_hf.fields.segment import (
    click_feature,
    otsu_threshold,
    recolor,
    scale_specular,
    segment_everything,
    segment_masks,
    select_by_click,
    select_region,
    selection_masks,
    set_roughness,
)

from .conftest import HELD_OUT, TRAIN

# Documented bound (docs/fields.md): with exact instance features, one click selects an object whose
# rendered mask has at least this IoU with its ground truth on held-out views (32x48 pixels).
CLICK_IOU_BOUND = 0.7


def _objects(scene, minimum=50):
    return [int(i) for i in scene.instances.unique() if i >= 7 and (scene.instances[HELD_OUT] == i).sum() >= minimum]


# Documented bounds: segment everything on the tiny scene with exact instance features, segments
# matched to objects (Hungarian): mean and best IoU (touching objects merge into one segment).
EVERYTHING_MEAN_IOU_BOUND, EVERYTHING_BEST_IOU_BOUND = 0.2, 0.45


def _select(field, scene, instance, method="region"):
    position, pixel = click_for_object(scene, TRAIN, instance)
    return select_by_click(field, position, pixel, method=method)


def test_one_click_selects_the_object_in_held_out_views(instance_field, glossy_scene):
    objects = _objects(glossy_scene)
    assert len(objects) >= 3
    for instance in objects:
        selection = _select(instance_field, glossy_scene, instance, "threshold")
        masks = selection_masks(instance_field, selection, glossy_scene.cameras[HELD_OUT])
        assert iou(masks, glossy_scene.instances[HELD_OUT] == instance) >= CLICK_IOU_BOUND, instance


def test_region_covers_the_clicked_object_and_stops_at_the_room(instance_field, glossy_scene):
    # Exact instance features are random 8-channel codes: objects that touch are joined by edges
    # far stronger than those to the room, so the region may take a touching object with it (the
    # lowest-conductance cut is around the group); it takes the whole clicked object and of the
    # room only pixels along the outlines.
    truth = glossy_scene.instances[HELD_OUT]
    for instance in _objects(glossy_scene):
        selection = _select(instance_field, glossy_scene, instance, "region")
        assert selection.method == "region"
        masks = selection_masks(instance_field, selection, glossy_scene.cameras[HELD_OUT])
        on_object = truth == instance
        assert (masks & on_object).sum() >= 0.9 * on_object.sum(), instance
        assert (masks & (truth < 7)).sum() <= 0.15 * masks.sum(), instance  # outline pixels of a 32x48 view


def test_region_is_the_seeds_side_of_the_weakest_cut():
    # Two 6-node cliques (weight 1) joined by one edge of weight 0.01: the walk from node 0 stays
    # in its clique and the sweep cut stops there, at conductance 0.01 / 30.01.
    clique = [(a, b) for a in range(6) for b in range(6) if a != b]
    rows, columns = zip(*(clique + [(a + 6, b + 6) for a, b in clique] + [(5, 6), (6, 5)]))
    weights = [1.0] * (2 * len(clique)) + [0.01, 0.01]
    graph = scipy.sparse.csr_matrix((weights, (rows, columns)), shape=(12, 12))
    field = SimpleNamespace(means=torch.zeros(12, 3))
    selection = select_region(field, torch.tensor([0]), torch.zeros(4), graph, largest=0.5)
    assert selection.mask.tolist() == [True] * 6 + [False] * 6
    assert selection.method == "region" and selection.similarity[:6].min() > selection.similarity[6:].max()


def test_segment_everything_finds_the_objects(instance_field, glossy_scene):
    labels = segment_everything(instance_field)
    assert labels.shape == (instance_field.num_gaussians,) and int(labels.max()) >= 3
    masks = segment_masks(instance_field, labels, glossy_scene.cameras[HELD_OUT])
    objects = _objects(glossy_scene)
    scores = matched_iou(masks, glossy_scene.instances[HELD_OUT], objects)
    assert sum(scores.values()) / len(objects) >= EVERYTHING_MEAN_IOU_BOUND, scores
    assert max(scores.values()) >= EVERYTHING_BEST_IOU_BOUND, scores


def test_matched_iou_pairs_segments_with_objects_one_to_one():
    truth = torch.tensor([[[7, 7, 8, 8, 1]]])
    predicted = torch.tensor([[[1, 1, 0, 0, -1]]])  # ids swapped, the room unsegmented
    assert matched_iou(predicted, truth, [7, 8]) == {7: 1.0, 8: 1.0}
    merged = torch.tensor([[[0, 0, 0, 0, -1]]])  # one segment for both: one object matched (IoU 0.5), one not
    assert sorted(matched_iou(merged, truth, [7, 8]).values()) == [0.0, 0.5]


def test_specular_sensitivity_and_the_colour_teacher(glossy_scene):
    matte = glossy_scene.images.clone()
    highlights = glossy_scene.highlights
    glossy = torch.where(highlights[:, None], (matte + 0.5).clamp(max=1.0), matte)
    per_pixel = CallableFeatures(lambda images, views: images.clone(), "pixels")  # a teacher without spatial mixing
    change = specular_sensitivity(per_pixel, glossy, matte, highlights)
    assert change["elsewhere"][0] == 0.0 and change["elsewhere"][1] == int((~highlights).sum())
    assert change["highlights"][1] == int(highlights.sum()) > 0 and change["highlights"][0] > 0.0
    teacher = WithColour(per_pixel, weight=4.0)
    features = teacher(glossy[:2], torch.arange(2))
    torch.testing.assert_close(features, torch.cat([glossy[:2], 4.0 * glossy[:2]], dim=1))
    assert teacher.name == "pixels+colour" and teacher.identity != WithColour(per_pixel, weight=2.0).identity


def test_removing_reflections_leaves_everything_else_bit_identical(instance_field, glossy_scene):
    instance = glossy_scene.glossy_instances[0]
    selection = _select(instance_field, glossy_scene, instance)
    edited = scale_specular(instance_field, selection, 0.0)
    cameras = glossy_scene.cameras[TRAIN]
    with torch.no_grad():
        before = instance_field.render(cameras, features=False, extra=selection.mask.float()[:, None])
        after = edited.render(cameras, features=False)
    footprint = before.extra[:, 0] > 0  # pixels any selected Gaussian reaches
    outside = ~footprint[:, None].expand_as(before.diffuse)
    assert torch.equal(before.color("full")[outside], after.color("full")[outside])
    assert torch.equal(before.specular[outside], after.specular[outside])
    # On the object (its pixels at least 90 % rendered by the selection), the specular energy drops
    # to near zero: what remains comes from the unselected Gaussians blended into those pixels.
    core = before.extra[:, 0] >= 0.9 * before.alpha[:, 0]
    on_object = core & (before.alpha[:, 0] >= 0.5) & (glossy_scene.instances[TRAIN] == instance)
    energy_before = before.specular.abs().sum(1)[on_object].mean()
    energy_after = after.specular.abs().sum(1)[on_object].mean()
    assert energy_before > 0.01
    assert energy_after < 0.1 * energy_before


def test_recolor_changes_the_selection_only(instance_field, glossy_scene):
    instance = _objects(glossy_scene)[0]
    selection = _select(instance_field, glossy_scene, instance)
    edited = recolor(instance_field, selection, (0.0, 0.0, 1.0))
    assert torch.equal(edited.diffuse[~selection.mask], instance_field.diffuse[~selection.mask])
    new = edited.diffuse[selection.mask]
    assert torch.equal(new[:, :2], torch.zeros_like(new[:, :2]))  # pure blue, texture kept in the intensity
    torch.testing.assert_close(new[:, 2].mean(), torch.tensor(1.0))


def test_roughness_damps_the_view_dependence(instance_field, glossy_scene):
    selection = _select(instance_field, glossy_scene, glossy_scene.glossy_instances[0])
    rough = set_roughness(instance_field, selection, 1e3)  # every band l >= 1 vanishes: exp(-l (l + 1) 500)
    centres = glossy_scene.cameras.centres[:2]
    with torch.no_grad():
        specular, _ = rough.view_dependent(centres)
        original, _ = instance_field.view_dependent(centres)
    constant = 0.28209479177387814 * instance_field.specular[:, 0]  # the l = 0 band alone
    torch.testing.assert_close(specular[:, selection.mask], constant[selection.mask].expand(2, -1, -1))
    assert torch.equal(specular[:, ~selection.mask], original[:, ~selection.mask])


def test_clicks_outside_the_image_or_the_scene_are_one_line_errors(instance_field):
    with pytest.raises(ValueError, match="click 48,3 is outside the 48x32 image of view 0"):
        click_feature(instance_field, 0, (48, 3))
    with pytest.raises(ValueError, match="view 99 is out of range"):
        click_feature(instance_field, 99, (3, 3))
    # The same camera moved 1000 m back: the scene lies beyond its far plane, nothing is covered.
    cameras = instance_field.cameras[[0]]
    away = cameras.extrinsics.clone()
    away[0, :3, 3] -= 1000.0 * away[0, :3, 2]
    empty = Cameras(away, cameras.intrinsics, cameras.near, cameras.far, cameras.image_size)
    with pytest.raises(ValueError, match="not covered by the field .* click on the scene"):
        click_feature(instance_field, 0, (10, 10), cameras=empty)


def test_otsu_splits_two_groups():
    values = torch.cat([torch.full((60,), 0.1), torch.full((40,), 0.8)])
    assert 0.1 < otsu_threshold(values) < 0.8
