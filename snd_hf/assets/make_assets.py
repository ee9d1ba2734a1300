"""Rebuild the packaged demo views deterministically: ``python snd_hf/assets/make_assets.py``.

- ``demo/view{0,1,2}.png``: three 168x224 frames (start, middle and end of the camera trajectory)
  of one room made by the project's procedural scene generator (:mod:`snd_hf.data.synthetic`,
  scene 8 of seed 0, which the default training run never sees). The views overlap and show the
  same objects from several viewpoints, which is what 3D-aware features are about.
- ``default/`` is not written here: it is the embedded checkpoint that ``snd demo`` falls back to
  offline, the final student of the default training run, a tiny ViT trained for a few dozen steps
  on generated scenes (it shows the pipeline, not SnD's feature quality)::

      OMP_NUM_THREADS=1 python training/train.py && cp outputs/snd-synthetic-tiny/{config.json,model.safetensors,preprocessor_config.json} snd_hf/assets/default/

  Any native SnD directory (same file names) can replace it; ``preprocessor_config.json`` is what
  ``AutoImageProcessor`` and ``pipeline("image-feature-extraction")`` read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from snd_hf.data.synthetic import render_synthetic_scene
from snd_hf.files import atomic_write

ASSETS = Path(__file__).resolve().parent
DEMO_SIZE = (168, 224)  # height, width: 12 x 16 patches of 14 pixels
DEMO_SCENE = 8  # scene index; the default run trains on scenes 0-3 of the same seed
DEMO_SEED = 0
DEMO_VIEWS = 3  # frames evenly spaced along the scene's trajectory


def make_demo_images(folder: Path) -> list[Path]:
    """Write ``view{i}.png`` (uint8 RGB [H, W, 3]) for the demo frames; returns the paths."""
    height, width = DEMO_SIZE
    rendered = render_synthetic_scene(DEMO_SCENE, num_frames=DEMO_VIEWS, height=height, width=width, seed=DEMO_SEED)
    paths = []
    for index, image in enumerate(rendered["image"]):  # [H, W, 3] in [0, 1]
        path = folder / f"view{index}.png"
        picture = Image.fromarray(np.round(image * 255).astype(np.uint8))
        atomic_write(path, lambda temporary: picture.save(temporary, format="PNG", optimize=True))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in make_demo_images(ASSETS / "demo"):
        print(written)
