"""Multi-view scene dataset: samples context/target views of posed scenes for SnD training.

One item is one draw of views from one scene, in the snd-hf scene batch layout without the
batch dimension::

    sample["context"] / sample["target"]: dict with
        image [V, 3, H, W] in [0, 1], extrinsics [V, 4, 4] (camera-to-world, OpenCV),
        intrinsics [V, 3, 3] (normalised), near [V], far [V], mask [V, H, W] int64,
        and, when the scene stores them, depth [V, H, W] (metres, 0 = invalid),
        normals [V, 3, H, W] (camera frame), semantics [V, H, W] int64.
    sample["scene"]: the scene id.
    sample["index"]: {"context": [Vc], "target": [Vt]} positions in the scene's frame list
        (sorted by frame number, ``is_bad`` frames removed).

:func:`collate_scenes` stacks samples into the batch layout (B first; ``scene`` becomes a list).

View sampling follows SnD's bounded sampler: the context views span ``context_gap`` frames
(``num_context`` views spread evenly over that span) and targets lie between them
(``target_mode="between"``, inclusive, as in the original; ``"inside"`` excludes the context
frames themselves) or outside them within one gap
(``target_mode="novel"``). The draw depends only on ``(seed, epoch, scene id, draw number)``: call
:meth:`SceneDataset.set_epoch` each epoch and a resumed run sees the same data order.

Example::

    from torch.utils.data import DataLoader
    from snd_hf.data.scenes import SceneDataset, collate_scenes
    from snd_hf.data.synthetic import ensure_synthetic_scenes

    root = ensure_synthetic_scenes("data/synthetic")
    dataset = SceneDataset(root, image_size=(96, 128))
    loader = DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=collate_scenes)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from snd_hf.data.frames import FrameReadError
from snd_hf.data.sampling import SamplingOptions, SceneSource, stack_arrays
from snd_hf.data.scannetpp import OPTIONAL_FIELDS, FolderScenes, SceneRecord


class SceneDataset(Dataset):
    """Context/target views of posed multi-view scenes.

    Args:
        root: a ScanNet++-layout folder (``scenes/<id>/...``), a folder written by
            ``datasets.Dataset.save_to_disk`` or holding parquet files of
            :mod:`snd_hf.data.hf`'s schema, a ``datasets.Dataset`` of that schema, or any
            :class:`SceneSource`.
        num_context: context views per sample (SnD uses 2).
        context_gap: frames between the first and last context view: an int or an inclusive
            (min, max) range.
        num_targets: target views per sample.
        target_mode: ``"between"`` draws targets within the context span (context frames included),
            ``"inside"`` within it but never a context frame, ``"novel"`` outside it.
        image_size: output (H, W); None keeps the native size (all scenes must then share it to
            be batched). Intrinsics are normalised, so resizing leaves them unchanged.
        skip_bad: drop frames flagged ``is_bad``.
        seed: sampling seed.
        near, far: clipping distances given to every view, in scene units.
        samples_per_scene: items per scene per epoch.
        fields: optional maps to load when a scene has them (any of depth, normals, semantics).
        on_error: ``"skip"`` counts unusable scenes, frames and samples in ``skipped`` (with a
            warning the first time for each reason) and moves on; ``"raise"`` raises. The same
            problems are skipped from a folder and from ``datasets`` rows: unusable cameras and
            frame paths when the scenes are listed, unreadable files when a sample is loaded. A
            skipped sample is replaced by a draw from the next scene. DataLoader workers each
            count the skips of their own samples.
        allow_outside_root: let a folder's scene folders and files resolve (through symbolic
            links) outside ``root``; refused by default.

    Raises:
        CameraModelError: a scene's camera is distorted or not a pinhole (whatever ``on_error``).
    """

    def __init__(
        self,
        root: str | Path | SceneSource,
        *,
        num_context: int = 2,
        context_gap: int | tuple[int, int] = 8,
        num_targets: int = 1,
        target_mode: Literal["between", "inside", "novel"] = "between",
        image_size: tuple[int, int] | None = None,
        skip_bad: bool = True,
        seed: int = 0,
        near: float = 0.1,
        far: float = 20.0,
        samples_per_scene: int = 1,
        fields: tuple[str, ...] = OPTIONAL_FIELDS,
        on_error: Literal["skip", "raise"] = "skip",
        allow_outside_root: bool = False,
    ):
        options = SamplingOptions(
            num_context, context_gap, num_targets, target_mode, image_size, skip_bad, seed, near, far, samples_per_scene, fields
        )
        if on_error not in ("skip", "raise"):
            raise ValueError(f"`on_error` must be 'skip' or 'raise', got {on_error!r}.")
        self.options, self.on_error, self.epoch = options, on_error, 0
        self.source = _open_source(root, skip_bad=skip_bad, on_error=on_error, allow_outside_root=allow_outside_root)
        self.skipped = self.source.skipped

        self.scenes: list[SceneRecord] = []
        for scene in self.source.scenes:
            if len(scene) >= options.min_frames:
                self.scenes.append(scene)
                continue
            message = f"{scene.location or scene.scene_id}: {len(scene)} usable frames, the sampler needs {options.min_frames}"
            if on_error == "raise":
                raise ValueError(message)
            self.skipped.add("too few frames", message)
        if not self.scenes:
            raise ValueError(f"no usable scene in {root!r} (skipped: {dict(self.skipped.counts)}).")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose view draws ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.scenes) * self.options.samples_per_scene

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        # Deviation: views are positions in the frame list, so numbering gaps never trigger the
        # original's endless retry; a sample with an unreadable file is replaced by the same draw
        # of the next scene, at most one full lap.
        scene_index, draw = divmod(index, self.options.samples_per_scene)
        for attempt in range(len(self.scenes)):
            scene = self.scenes[(scene_index + attempt) % len(self.scenes)]
            try:
                return self.options.sample(self.source, scene, self.options.rng(self.epoch, scene.scene_id, draw))
            except FrameReadError as error:
                if self.on_error == "raise":
                    raise
                self.skipped.add(error.kind, error.path)
        raise RuntimeError(f"every scene failed to load a sample (skipped: {dict(self.skipped.counts)}).")


def collate_scenes(samples: list[dict]) -> dict:
    """Stack :class:`SceneDataset` samples into the scene batch layout (B first)."""
    if not samples:
        raise ValueError("`samples` must be a non-empty list.")
    batch = {"scene": [sample["scene"] for sample in samples]}
    for part in ("context", "target"):
        keys = list(samples[0][part])
        for sample in samples[1:]:
            if set(sample[part]) != set(keys):
                raise ValueError(
                    f"samples have different {part} fields: {sorted(keys)} vs {sorted(sample[part])} "
                    f"(scene {sample['scene']!r}); pass `fields` to SceneDataset to load the same maps everywhere."
                )
        try:
            batch[part] = {key: stack_arrays([sample[part][key] for sample in samples]) for key in keys}
        except ValueError as error:
            raise ValueError(f"cannot batch {part} views of different shapes; set `image_size` ({error})") from None
    batch["index"] = {part: stack_arrays([sample["index"][part] for sample in samples]) for part in ("context", "target")}
    return batch


def _open_source(root, *, skip_bad: bool, on_error: str, allow_outside_root: bool) -> SceneSource:
    if hasattr(root, "load_view") and hasattr(root, "scenes"):
        return root
    if not isinstance(root, (str, Path)):
        from snd_hf.data.hf import HFScenes  # datasets is imported only when used

        return HFScenes(root, skip_bad=skip_bad, on_error=on_error)
    path = Path(root)
    if (path / "scenes").is_dir() or any(path.glob("*/instance_segmentation")):
        return FolderScenes(path, skip_bad=skip_bad, on_error=on_error, allow_outside_root=allow_outside_root)
    from snd_hf.data.hf import HFScenes, load_scene_dataset

    return HFScenes(load_scene_dataset(path), skip_bad=skip_bad, on_error=on_error)
