"""Fitting against features with known answers: exact functions of 3D position, the image itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from snd_hf.fields.features import CallableFeatures, TensorFeatures
from snd_hf.fields.fit import FitConfig, fit_appearance, fit_features
from snd_hf.fields.segment import image_click_feature

from .conftest import CONFIG, HELD_OUT, TRAIN, instance_features, position_features

# Documented bound (docs/fields.md): with view-independent teacher features, the rendered f_dep
# holds under this fraction of the rendered f_ind's energy on the held-out views.
DEP_ENERGY_BOUND = 0.05


def _energy_ratio(field, cameras) -> float:
    with torch.no_grad():
        out = field.render(cameras)
    covered = out.alpha[:, 0] >= 0.5
    return float(out.features_dep.square().sum(1)[covered].sum() / out.features_ind.square().sum(1)[covered].sum())


@pytest.mark.slow
def test_features_of_3d_position_render_back_at_held_out_views(glossy_scene, glossy_appearance):
    truth = position_features(glossy_scene)
    field = fit_features(glossy_appearance, glossy_scene, truth, CONFIG, progress=False)
    with torch.no_grad():
        out = field.render(glossy_scene.cameras[HELD_OUT])
    covered = out.alpha[:, 0] >= 0.5
    assert covered.float().mean() > 0.9
    for component in ("ind", "full"):
        restored = field.feature_space.unproject(out.features(component) / out.alpha.clamp_min(0.5))
        cosine = F.cosine_similarity(restored, truth.features[HELD_OUT], dim=1)[covered]
        assert cosine.mean() >= 0.95, component
        assert cosine.quantile(0.05) >= 0.9, component
    # View-independent by construction, glossy scene or not: f_dep stays near zero.
    assert _energy_ratio(field, glossy_scene.cameras[HELD_OUT]) < DEP_ENERGY_BOUND


@pytest.mark.slow
def test_f_dep_stays_near_zero_on_a_matte_scene(matte_scene):
    # The teacher is the image itself: on a matte (Lambertian) scene it does not depend on the view.
    appearance = fit_appearance(matte_scene, CONFIG, train_views=TRAIN, progress=False)
    field = fit_features(appearance, matte_scene, CallableFeatures(lambda images, views: images, "rgb"), CONFIG, progress=False)
    assert _energy_ratio(field, matte_scene.cameras[HELD_OUT]) < DEP_ENERGY_BOUND


@pytest.mark.slow
def test_f_dep_takes_the_highlights_of_a_glossy_scene(glossy_scene, glossy_appearance):
    field = fit_features(glossy_appearance, glossy_scene, CallableFeatures(lambda images, views: images, "rgb"), CONFIG, progress=False)
    with torch.no_grad():
        out = field.render(glossy_scene.cameras[TRAIN])
    dependent = out.features_dep.norm(dim=1)
    highlights = glossy_scene.highlights[TRAIN]
    assert highlights.sum() > 20
    assert dependent[highlights].mean() > 3.0 * dependent[~highlights].mean()


def test_fitting_is_deterministic(glossy_scene):
    config = FitConfig(init_stride=2, init_views=3, appearance_steps=6, feature_steps=6, feature_dim=4, seed=7)
    features = instance_features(glossy_scene)
    fields = [
        fit_features(fit_appearance(glossy_scene, config, train_views=TRAIN, progress=False), glossy_scene, features, config, progress=False)
        for _ in range(2)
    ]
    first, second = (dict(field.state_tensors()) for field in fields)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_scene_without_depth_needs_a_lifter(glossy_scene):
    from dataclasses import replace

    with pytest.raises(ValueError, match="no depth maps .* pass a lifter"):
        fit_appearance(replace(glossy_scene, depth=None), CONFIG, progress=False)


@pytest.mark.parametrize("views", [[], [0, 0], [0, 99]])
def test_rejects_bad_train_views(glossy_scene, views):
    with pytest.raises(ValueError, match="train_views"):
        fit_appearance(glossy_scene, CONFIG, train_views=views, progress=False)


def test_features_of_another_model_are_refused(instance_field, glossy_scene):
    image = glossy_scene.images[0]
    same = instance_features(glossy_scene)
    query = image_click_feature(instance_field, image, (20, 20), same)  # view 0 of the same maps
    assert query.shape == (instance_field.feature_dim,)
    other = TensorFeatures(position_features(glossy_scene).features[:1], "position")
    with pytest.raises(ValueError, match="distilled from 'instances'.*use the same feature model"):
        image_click_feature(instance_field, image, (20, 20), other)
