"""Rebuild the packaged demo views deterministically: ``python snd_hf/assets/make_assets.py``.

- ``demo/view{0,1,2}.png``: three 168x224 frames (2, 6 and 10 of a 12-frame trajectory: the SnD
  recipe's gap of 4 frames between neighbours) of one room made by the project's procedural scene
  generator (:mod:`snd_hf.data.synthetic`, scene 0 of seed 4000, which no training, pre-training,
  benchmark or evaluation run uses). The views overlap and show the same objects from several
  viewpoints, which is what 3D-aware features are about.
- ``demo/truth/depth{0,1,2}.png`` (16-bit z-depth in millimetres) and ``demo/truth/cameras.json``
  (camera-to-world in OpenCV axes, intrinsics normalised by width/height): the ground truth that
  ``snd demo``'s correspondence picture scores matches against.
- ``pretrained_2d/`` is not written here: ``python training/pretrain_2d.py`` makes it.
- ``default/`` is not written here: it is the embedded checkpoint that ``snd demo`` falls back to
  offline, the final student of the default training run (the 2D-pretrained tiny ViT after SnD
  with the CPU recipe)::

      OMP_NUM_THREADS=1 python training/train.py && cp outputs/snd-synthetic-tiny/{config.json,model.safetensors,preprocessor_config.json} snd_hf/assets/default/

  Any native SnD directory (same file names) can replace it; ``preprocessor_config.json`` is what
  ``AutoImageProcessor`` and ``pipeline("image-feature-extraction")`` read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from snd_hf.cameras import normalize_intrinsics
from snd_hf.data.synthetic import render_synthetic_scene
from snd_hf.files import atomic_write

ASSETS = Path(__file__).resolve().parent
DEMO_SIZE = (168, 224)  # height, width: 12 x 16 patches of 14 pixels
DEMO_SEED = 4000
DEMO_SCENE = 0
TRAJECTORY_FRAMES = 12
DEMO_FRAMES = (2, 6, 10)


def make_demo_images(folder: Path) -> list[Path]:
    """Write ``view{i}.png`` (uint8 RGB [H, W, 3]), ``truth/depth{i}.png`` and ``truth/cameras.json``; returns the view paths."""
    import torch

    height, width = DEMO_SIZE
    rendered = render_synthetic_scene(DEMO_SCENE, num_frames=TRAJECTORY_FRAMES, height=height, width=width, seed=DEMO_SEED)
    paths = []
    for index, frame in enumerate(DEMO_FRAMES):
        path = folder / f"view{index}.png"
        picture = Image.fromarray(np.round(rendered["image"][frame] * 255).astype(np.uint8))
        atomic_write(path, lambda temporary: picture.save(temporary, format="PNG", optimize=True))
        depth = Image.fromarray(np.clip(np.round(rendered["depth"][frame] * 1000.0), 0, 65535).astype(np.uint16))
        atomic_write(folder / "truth" / f"depth{index}.png", lambda temporary: depth.save(temporary, format="PNG", optimize=True))
        paths.append(path)
    intrinsics = normalize_intrinsics(torch.from_numpy(rendered["intrinsics"]).float(), height, width)
    cameras = {
        "scene": f"synthetic seed {DEMO_SEED} scene {DEMO_SCENE}, frames {list(DEMO_FRAMES)} of {TRAJECTORY_FRAMES}",
        "intrinsics": intrinsics.tolist(),
        "extrinsics": [rendered["extrinsics"][frame].tolist() for frame in DEMO_FRAMES],
    }
    text = json.dumps(cameras, indent=1)
    atomic_write(folder / "truth" / "cameras.json", lambda temporary: Path(temporary).write_text(text))
    return paths


if __name__ == "__main__":
    for written in make_demo_images(ASSETS / "demo"):
        print(written)
