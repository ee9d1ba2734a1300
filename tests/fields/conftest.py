"""Tiny generated scenes and fields shared by the feature-field tests (12 views of 32x48, fitted in seconds)."""

from __future__ import annotations

import pytest
import torch

from snd_hf.cameras import unproject_depth
from snd_hf.data.synthetic import render_synthetic_scene
from snd_hf.fields.features import TensorFeatures
from snd_hf.fields.fit import FitConfig, fit_appearance, fit_features
from snd_hf.fields.scene import FieldScene, scene_from_arrays

TINY = {"num_frames": 12, "height": 32, "width": 48, "seed": 1}
SCENE_INDEX = 1  # three glossy objects among four
TRAIN = [view for view in range(12) if view % 4 != 1]
HELD_OUT = [view for view in range(12) if view % 4 == 1]
CONFIG = FitConfig(init_stride=1, init_views=4, appearance_steps=40, feature_steps=80, feature_dim=8, seed=0)


def position_features(scene: FieldScene, channels: int = 8) -> TensorFeatures:
    """Features that are an exact, smooth function of the 3D point seen at each pixel. [V, C, H, W]"""
    points = unproject_depth(scene.depth, scene.cameras.extrinsics, scene.cameras.intrinsics)  # [V, H, W, 3]
    frequencies = 1.5 * torch.randn(3, channels, generator=torch.Generator().manual_seed(0))
    return TensorFeatures((1.0 + 0.5 * torch.sin(points @ frequencies)).permute(0, 3, 1, 2), "position")


def instance_features(scene: FieldScene, channels: int = 8) -> TensorFeatures:
    """One random unit vector per instance id, painted on its pixels. [V, C, H, W]"""
    codes = torch.nn.functional.normalize(torch.randn(64, channels, generator=torch.Generator().manual_seed(1)), dim=-1)
    return TensorFeatures(codes[scene.instances].permute(0, 3, 1, 2), "instances")


@pytest.fixture(scope="session")
def glossy_scene() -> FieldScene:
    return scene_from_arrays(render_synthetic_scene(SCENE_INDEX, glossy=True, **TINY))


@pytest.fixture(scope="session")
def matte_scene() -> FieldScene:
    return scene_from_arrays(render_synthetic_scene(SCENE_INDEX, glossy=False, **TINY))


@pytest.fixture(scope="session")
def glossy_appearance(glossy_scene):
    """Stage 1 on the glossy scene (read-only: fit_features and the edits return copies)."""
    return fit_appearance(glossy_scene, CONFIG, train_views=TRAIN, progress=False)


@pytest.fixture(scope="session")
def instance_field(glossy_scene, glossy_appearance):
    """Stage 2 on instance features: clicks select whole objects."""
    return fit_features(glossy_appearance, glossy_scene, instance_features(glossy_scene), CONFIG, progress=False)
