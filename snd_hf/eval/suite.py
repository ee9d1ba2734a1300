"""`snd eval`: compare models on frozen-feature probes; write JSON, a markdown table and pictures.

Run it as::

    snd eval all --model dinov2=dinov2_vits14.pth --model snd=./snd-vits14 --data synthetic --out eval_out
    snd eval all --model init=init:outputs/run --model snd=outputs/run --data synthetic   # a run vs its start
    snd eval depth --model snd=./snd-vits14 --data nyuv2=/data/nyu --preset paper
    snd eval segmentation --model snd=./snd-vits14 --data ade20k=/data/ADEChallengeData2016 \\
        --concat-with dinov2_vits14.pth          # FiT3D mode: original ⊕ fine-tuned features
    snd eval all --model dinov2=dinov2_vits14.pth --model fit3d=fit3d_dinov2_small.pth \\
        --model mef=dinov2_small.ckpt@dinov2_vits14.pth --model snd=./snd-vits14 --data nyuv2=/data/nyu --preset paper
                                                 # the paper's table (MEF: its .ckpt on its DINOv2)

or from Python with ``evaluate(["snd=./snd-vits14"], "synthetic", tasks=("depth",), out_dir=...)``.

Each probe resizes position embeddings as the paper's code did (``snd_hf.eval.protocol``; ``--resize``
picks one protocol for all); ``results.json`` records it, and ``snd eval all`` ends with a table in
the paper's layout (``snd_hf.eval.paper_table``).

``--data`` is ``synthetic`` (generated scenes, cached; every task, CPU-friendly) or ``KIND=ROOT``
with KIND one of ``nyuv2`` (depth, normals), ``scannetpp`` (depth), ``kitti`` (depth),
``ade20k`` / ``voc`` (segmentation), ``scannet1500`` (correspondence). Features are extracted
once per model, image set and resize protocol and shared by the probes; each (weights, task, data, config)
result is cached as JSON under ``--cache-dir`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from snd_hf.distributed import process_state
from snd_hf.eval.datasets import (
    TASKS,
    DenseDataset,
    EvalData,
    NYUv2Probe3D,
    PascalVOC,
    ScanNetPairs,
    SplitFileDepth,
    ade20k,
    kitti_eigen,
    scannetpp_depth,
)
from snd_hf.eval.features import (
    DenseFeatures,
    FeatureModel,
    extract_features,
    load_feature_model,
)
from snd_hf.eval.figures import (
    colorize_depth,
    colorize_labels,
    colorize_normals,
    plot_grouped_bars,
)
from snd_hf.eval.metrics import METRICS_REVISION, ROTATION_BINS, DepthProtocol, display_unit, format_metric
from snd_hf.eval.paper_table import paper_table
from snd_hf.eval.probe import ProbeConfig
from snd_hf.eval.protocol import PAPER_RESIZE, RESIZE_PROTOCOLS, position_resize
from snd_hf.eval.synthetic import synthetic_eval_data
from snd_hf.eval.tasks import (
    DenseArrays,
    ProbeData,
    TaskResult,
    run_correspondence,
    run_depth,
    run_normals,
    run_segmentation,
)
from snd_hf.files import atomic_write
from snd_hf.run_folder import RunFolder
from snd_hf.schema import MAX_IMAGE_SIDE, MetricsSchema
from snd_hf.schema import load as load_json
from snd_hf.visualization import PCAProjection, fit_pca, pca_rgb, save_panel

__all__ = ["PRESETS", "TASKS", "EvalData", "EvalPreset", "evaluate", "open_data"]

@dataclass(frozen=True)
class EvalPreset:
    """Lengths and sizes of one evaluation setting.

    Attributes:
        name: preset name.
        input_short_side: images are resized so their shorter side is this (then snapped to 14).
        depth, normals, segmentation: probe training settings.
        num_matches: correspondence matches kept per pair.
        correspondence_scale: evaluation grid of the correspondence task relative to the image.
        synthetic: ``(num_scenes, num_frames, height, width)`` of the generated benchmark.
        num_panels: test images drawn in the qualitative panels.
        depth_protocol: per-image depth protocol (``depth_metrics``): ``"fit3d"`` drops test images
            without a scored pixel from the averages (the paper's), ``"probe3d"`` counts them as zeros.
        scale_invariant_depth: Probe3D's least-squares scale-and-shift alignment of each depth
            prediction before its metrics.
    """

    name: str
    input_short_side: int
    depth: ProbeConfig
    normals: ProbeConfig
    segmentation: ProbeConfig
    num_matches: int = 1000
    correspondence_scale: float = 0.25
    synthetic: tuple[int, int, int, int] = (8, 6, 96, 128)
    num_panels: int = 3
    depth_protocol: DepthProtocol = "fit3d"
    scale_invariant_depth: bool = False


_CPU_PROBE = ProbeConfig(steps=1500, batch_size=16, lr=2e-2, weight_decay=0.0, patience=3, eval_every=50)
PRESETS: dict[str, EvalPreset] = {
    # CPU: linear heads on cached features, trained until the loss on training rooms set aside
    # stops falling (at most 1500 steps), tested on 8 unseen rooms of 32.
    "cpu": EvalPreset(
        name="cpu",
        input_short_side=98,
        depth=_CPU_PROBE,
        normals=_CPU_PROBE,
        segmentation=_CPU_PROBE,
        num_matches=1000,
        synthetic=(32, 6, 96, 128),
    ),
    # The published lengths: FiT3D/mmseg depth (307.2k it, batch 2, lr 1e-4, 12.8k warm-up,
    # SigLoss warm-up 100 it) and segmentation (320k it, batch 2, lr 1e-3), Probe3D normals
    # (10 epochs, lr 5e-4).
    "paper": EvalPreset(
        name="paper",
        input_short_side=476,
        depth=ProbeConfig(steps=307_200, batch_size=2, lr=1e-4, weight_decay=0.01, warmup_fraction=12_800 / 307_200, loss_warmup_steps=100),
        normals=ProbeConfig(epochs=10, batch_size=8, lr=5e-4, weight_decay=0.01),
        segmentation=ProbeConfig(steps=320_000, batch_size=2, lr=1e-3, weight_decay=1e-4, warmup_fraction=1_500 / 320_000),
        num_matches=1000,
        synthetic=(64, 8, 240, 320),
    ),
}


DATA_KINDS = ("nyuv2", "scannetpp", "kitti", "ade20k", "voc", "scannet1500")  # --data KIND=ROOT


def open_data(spec: str, preset: EvalPreset, cache_dir: str | Path) -> EvalData:
    """Open ``synthetic`` or ``KIND=ROOT`` (see the module docstring)."""
    if spec == "synthetic":

        return synthetic_eval_data(Path(cache_dir) / "synthetic", preset.synthetic)
    kind, separator, root = spec.partition("=")
    if not separator or not root:
        raise ValueError(f"--data must be 'synthetic' or KIND=ROOT, got {spec!r}")
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r}: expected synthetic, {', '.join(DATA_KINDS[:-1])} or {DATA_KINDS[-1]}")
    if not Path(root).exists():  # named as the user wrote it, before any reader's own argument names
        raise FileNotFoundError(f"--data {spec}: {root} does not exist")
    if kind == "nyuv2":
        train, test = NYUv2Probe3D(root, "train"), NYUv2Probe3D(root, "test")
        return EvalData("nyuv2", {"depth": (train, test), "normals": (train, test)}, crop="eigen")
    if kind == "scannetpp":
        return EvalData("scannetpp", {"depth": (scannetpp_depth(root, "train"), scannetpp_depth(root, "val"))}, max_depth=20.0)
    if kind == "kitti":
        train = SplitFileDepth(root, "kitti_eigen_train.txt", depth_scale=256.0, max_depth=80.0, name="kitti")
        return EvalData("kitti", {"depth": (train, kitti_eigen(root))}, max_depth=80.0, crop="garg")
    if kind == "ade20k":
        return EvalData("ade20k", {"segmentation": (ade20k(root, "training"), ade20k(root, "validation"))}, num_classes=150)
    if kind == "voc":
        return EvalData("voc2012", {"segmentation": (PascalVOC(root, "train"), PascalVOC(root, "val"))}, num_classes=21)
    return EvalData("scannet1500", pairs=ScanNetPairs(root))  # the one kind left


def _input_size(height: int, width: int, short_side: int, patch: int = 14) -> tuple[int, int]:
    scale = short_side / min(height, width)
    return max(patch, round(height * scale / patch) * patch), max(patch, round(width * scale / patch) * patch)


def _materialize(dataset: DenseDataset, key: str) -> DenseArrays:
    """Stack a dense reader into tensors at the first sample's size (others resized; labels nearest)."""
    samples = [dataset[i] for i in tqdm(range(len(dataset)), desc=f"reading {key}", leave=False, disable=None)]
    if not samples:
        raise ValueError(f"dataset {key} is empty")
    size = tuple(samples[0].image.shape[-2:])

    def stack(name: str, mode: str) -> torch.Tensor | None:
        values = [getattr(sample, name) for sample in samples]
        if any(value is None for value in values):
            return None
        resized = []
        for value in values:
            if tuple(value.shape[-2:]) != size:
                batch = value[None] if value.dim() == 3 else value[None, None]
                batch = F.interpolate(batch.float(), size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
                value = (batch[0] if value.dim() == 3 else batch[0, 0]).to(value.dtype)
            resized.append(value)
        return torch.stack(resized)

    # Rooms, where the reader knows them: the probes' stopping rule sets whole rooms aside.
    groups = getattr(dataset, "groups", None)
    return DenseArrays(stack("image", "bilinear"), stack("depth", "nearest"), stack("normals", "nearest"), stack("labels", "nearest"), key, groups)


class _FeatureStore:
    """Features per (model weights, image set, resize protocol), extracted once and shared by the probes; across
    the processes of ``state`` while it is set (every process must then ask for the same features in turn)."""

    def __init__(self, short_side: int, state: PartialState | None = None):
        self.short_side = short_side
        self.state = state
        self._cache: dict[tuple[str, str, str], DenseFeatures] = {}

    def __call__(self, feature_model: FeatureModel, arrays: DenseArrays, resize: str) -> DenseFeatures:
        key = (feature_model.weights_hash, arrays.key, resize)
        if key not in self._cache:
            size = _input_size(*arrays.images.shape[-2:], self.short_side, feature_model.model.config.patch_size)
            models = [feature_model.model] + ([feature_model.concat_with.model] if feature_model.concat_with else [])
            with ExitStack() as stack:
                for model in models:
                    stack.enter_context(position_resize(model, resize))
                self._cache[key] = extract_features(
                    feature_model, arrays.images, size, description=f"{feature_model.name} {arrays.key}", state=self.state
                )
        return self._cache[key]


def _cache_path(cache_dir: Path, feature_model: FeatureModel, task: str, data: EvalData, config: dict) -> Path:
    payload = json.dumps({"weights": feature_model.weights_hash, "task": task, "data": data.name, "config": config}, sort_keys=True)
    return cache_dir / "results" / f"{data.name}_{task}_{hashlib.sha256(payload.encode()).hexdigest()[:20]}.json"


def _write_json(path: Path, payload: object) -> None:
    atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(payload, indent=2, allow_nan=True)))


def _markdown(results: dict[str, dict[str, dict[str, float]]], data_name: str, preset: str) -> str:
    lines = [
        f"# Probe results on {data_name} (preset {preset})",
        "",
        "Units: % percent (of pixels, matches or images), m the depth unit (metres), ° degrees, ×100 a hundred times"
        " the value; unlabelled: unitless. results.json keeps δ (d1-d3) and correspondence recalls as fractions in [0, 1].",
        "",
    ]
    for task, per_model in results.items():
        if not per_model:
            continue
        columns = list(next(iter(per_model.values())))
        headers = [f"{column} ({unit})" if (unit := display_unit(task, column)[0]) else column for column in columns]
        lines += [f"## {task}", "", "| model | " + " | ".join(headers) + " |", "|---" * (len(columns) + 1) + "|"]
        for model, metrics in per_model.items():
            cells = [format_metric(task, column, metrics[column]) for column in columns]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _pair_inputs(pairs: Sequence, scale: float) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]]:
    """Each pair's images, depths on the evaluation grid (nearest), cameras and rotation."""
    prepared = []
    for pair in (pairs[i] for i in range(len(pairs))):
        height, width = pair.images.shape[-2:]
        grid = (max(1, round(height * scale)), max(1, round(width * scale)))
        depths = F.interpolate(pair.depths[:, None].float(), size=grid, mode="nearest")[:, 0]
        prepared.append((pair.images, depths, pair.extrinsics, pair.intrinsics, pair.rotation_deg))
    return prepared


def evaluate(
    models: Sequence[str],
    data: str,
    tasks: Sequence[str] = TASKS,
    out_dir: str | Path = "eval_out",
    preset: str | EvalPreset = "cpu",
    concat_with: str | None = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
    resize: str | None = None,
) -> dict:
    """Compare models on probing tasks and write ``results.json``, ``results.md`` and pictures.

    ``results.json`` records what was evaluated: the data, the tasks, every preset setting
    (overrides included), ``concat_with``, each model's source and weights' SHA-256, and the
    pictures written. ``out_dir`` is a :class:`snd_hf.run_folder.RunFolder` of that identity: a
    folder holding another evaluation (or anything no snd run wrote) is refused unless
    ``overwrite``, which removes the files its manifest lists and only those; a second concurrent
    evaluation into it is refused; the same evaluation run again replaces its own results.

    Args:
        models: ``PATH`` or ``NAME=PATH`` per model.
        data: ``synthetic`` or ``KIND=ROOT``.
        tasks: subset of ``TASKS``; tasks the data cannot serve are skipped.
        out_dir: output folder.
        preset: ``"cpu"``, ``"paper"`` or an ``EvalPreset``.
        concat_with: FiT3D mode, the model whose features are concatenated in front of each model's.
        cache_dir: result / generated-data cache; ``<out_dir>/cache`` when None.
        overwrite: replace the results of another evaluation in ``out_dir``.
        resize: the position-embedding resize of every probe, ``"torchhub"`` or ``"timm"``; None: per
            probe, the one the paper's code used (``snd_hf.eval.protocol.PAPER_RESIZE``). Recorded in
            ``results.json`` as ``resize`` (``"paper"`` for None) and, per probe, ``position_resize``.

    Under ``accelerate launch`` (see docs/scale.md) the processes share the feature extraction, each running
    its part of the batches of every image set the tasks read (cached results or not); the probes, files and
    pictures are then the main process's alone, with the features a single process would have extracted.

    Returns:
        the JSON payload written to ``results.json`` (on the other processes of a launched run: an empty dict).

    Raises:
        FileExistsError: ``out_dir`` holds another evaluation's results, or files no snd run wrote,
            and ``overwrite`` is False (raised before any probe runs).
        BlockingIOError: another process is writing ``out_dir``.
    """
    if not models:
        raise ValueError("models must name at least one model")
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise ValueError(f"tasks must be among {TASKS}, got {unknown}")
    if resize is not None and resize not in RESIZE_PROTOCOLS:
        raise ValueError(f"resize must be one of {RESIZE_PROTOCOLS} or None (the paper's per probe), got {resize!r}")
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    out_dir = Path(out_dir)
    cache_dir = out_dir / "cache" if cache_dir is None else Path(cache_dir)
    state = process_state()
    # Dataset readers are opened (and their layout checked) first; only the synthetic set is written,
    # into the cache, so it is generated inside the run folder (by the main process, before the others read it).
    eval_data = None if data == "synthetic" else open_data(data, preset, cache_dir)
    feature_models = [load_feature_model(spec, concat_with) for spec in models]
    for feature_model in feature_models:  # each process extracts on its own device (its GPU under the launcher)
        feature_model.model.to(state.device)
        if feature_model.concat_with is not None:
            feature_model.concat_with.model.to(state.device)
    names = [feature_model.name for feature_model in feature_models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique (use NAME=PATH), got {names}")
    identity = {
        "data": data,
        "tasks": list(tasks),
        "preset": preset.name,
        "preset_settings": asdict(preset),
        "concat_with": concat_with,
        "resize": resize or "paper",
        "models": {fm.name: {"source": fm.source, "weights_sha256": fm.weights_hash} for fm in feature_models},
    }
    position_resize = {task: resize or PAPER_RESIZE[task] for task in tasks}
    if not state.is_main_process:  # a launched run's other processes only share the feature extraction
        state.wait_for_everyone()
        # The main process owns --out, cache included (its run folder): the others generate what they
        # need in a cache of their own (the synthetic set is deterministic given its seed).
        with tempfile.TemporaryDirectory(prefix="snd-eval-") as private:
            eval_data = eval_data or open_data(data, preset, Path(private))
            _share_extraction(
                state, _FeatureStore(preset.input_short_side), eval_data, feature_models, tasks, preset, position_resize,
                _reader_arrays(eval_data),
            )
        return {}
    with RunFolder(out_dir, "snd eval", identity, overwrite=overwrite, caches=["cache"]):
        eval_data = eval_data or open_data(data, preset, cache_dir)
        state.wait_for_everyone()
        return _evaluate(feature_models, eval_data, tasks, out_dir, preset, cache_dir, identity, position_resize, state)


def _reader_arrays(eval_data: EvalData):
    """``load(reader, split) -> DenseArrays``, reading each reader once.

    Readers shared by several tasks (NYUv2 depth + normals, the synthetic set) are read and
    featurised once: arrays are keyed by reader, so the feature store sees one image set.
    """
    loaded: dict[int, DenseArrays] = {}

    def load(reader: DenseDataset, split: str) -> DenseArrays:
        if id(reader) not in loaded:
            loaded[id(reader)] = _materialize(reader, f"{eval_data.name}-{split}{len(loaded)}")
        return loaded[id(reader)]

    return load


def _share_extraction(state, store, eval_data, feature_models, tasks, preset, position_resize, load) -> None:
    """Extract every image set the tasks read across the processes of ``state``: every process calls this with
    the same arguments, so each asks for the same features in the same order."""
    store.state = state
    for task in [task for task in tasks if task in eval_data.tasks]:
        if task == "correspondence":
            image_sets = [_pair_images(eval_data, preset)[1]]
        else:
            image_sets = [load(reader, split) for reader, split in zip(eval_data.dense[task], ("train", "test"))]
        for feature_model, arrays in itertools.product(feature_models, image_sets):
            store(feature_model, arrays, position_resize[task])
    store.state = None


def _evaluate(feature_models, eval_data, tasks, out_dir, preset, cache_dir, identity, position_resize, state) -> dict:
    """`evaluate` inside its run folder, on the main process: every file written here is owned by it."""
    tasks = [task for task in tasks if task in eval_data.tasks]
    store = _FeatureStore(preset.input_short_side)
    load = _reader_arrays(eval_data)
    if state.num_processes > 1:
        _share_extraction(state, store, eval_data, feature_models, tasks, preset, position_resize, load)

    results: dict[str, dict[str, dict[str, float]]] = {}
    losses: dict[str, dict[str, list[float]]] = {}
    pictures: list[Path] = []

    for task in tasks:
        results[task], losses[task] = {}, {}
        # One line per task, also where the progress bars are off (output to a file or a pipe).
        print(f"{task}: {', '.join(model.name for model in feature_models)}", flush=True)
        if task == "correspondence":
            pictures.append(
                _evaluate_correspondence(
                    eval_data, feature_models, preset, store, cache_dir, out_dir, results, position_resize[task]
                )
            )
            continue
        train_reader, test_reader = eval_data.dense[task]
        train, test = load(train_reader, "train"), load(test_reader, "test")
        config = getattr(preset, task)
        task_resize = position_resize[task]
        predictions: dict[str, list[torch.Tensor]] = {}
        for feature_model in feature_models:
            scoring = {"metrics": METRICS_REVISION, "size": preset.input_short_side, "position_resize": task_resize}
            if task == "depth":
                scoring.update(protocol=preset.depth_protocol, scale_invariant=preset.scale_invariant_depth)
            cache = _cache_path(cache_dir, feature_model, task, eval_data, {**asdict(config), **scoring})
            # The first predictions are cached beside the metrics, so a cached result still gets its panels.
            shown = cache.with_suffix(".safetensors")
            if cache.is_file():
                results[task][feature_model.name] = load_json(cache, MetricsSchema).metrics
                if shown.is_file():
                    predictions[feature_model.name] = list(load_file(shown)["predictions"])
                continue
            result = _run_dense(task, train, test, feature_model, store, config, eval_data, preset, task_resize)
            if result.predictions:
                atomic_write(shown, lambda temporary: save_file({"predictions": torch.stack(result.predictions)}, temporary))
            _write_json(cache, {"metrics": result.metrics, "model": feature_model.source, "task": task, "data": eval_data.name})
            results[task][feature_model.name] = result.metrics
            losses[task][feature_model.name] = result.losses
            predictions[feature_model.name] = result.predictions
        pictures += _dense_panels(task, test, predictions, eval_data, out_dir / task)
        pictures += _pca_panels(test, feature_models, store, preset.num_panels, out_dir / "pca" / task, task_resize)

    payload = {
        **identity,
        "tasks": tasks,
        "position_resize": {task: position_resize[task] for task in tasks},
        "results": results,
        "final_training_loss": {task: {name: values[-1] for name, values in per.items() if values} for task, per in losses.items()},
        "pictures": sorted(path.relative_to(out_dir).as_posix() for path in pictures),
    }
    _write_json(out_dir / "results.json", payload)
    markdown = _markdown(results, eval_data.name, preset.name)
    if len(tasks) > 1:
        widths = {fm.name: fm.model.config.hidden_size for fm in feature_models}
        markdown += "\n" + paper_table(results, identity["data"], preset.name, widths)
    atomic_write(out_dir / "results.md", lambda temporary: Path(temporary).write_text(markdown))
    return payload


def _run_dense(
    task: str,
    train: DenseArrays,
    test: DenseArrays,
    feature_model: FeatureModel,
    store: _FeatureStore,
    config: ProbeConfig,
    eval_data: EvalData,
    preset: EvalPreset,
    resize: str,
) -> TaskResult:
    data = ProbeData(train, store(feature_model, train, resize), test, store(feature_model, test, resize))
    if task == "depth":
        return run_depth(
            data, config, eval_data.min_depth, eval_data.max_depth, eval_data.crop, preset.num_panels,
            preset.depth_protocol, preset.scale_invariant_depth,
        )
    if task == "normals":
        return run_normals(data, config, preset.num_panels)
    return run_segmentation(data, config, eval_data.num_classes, preset.num_panels)


def _pair_images(eval_data: EvalData, preset: EvalPreset) -> tuple[list, DenseArrays]:
    """The correspondence pairs' inputs and their images, both views of each pair in turn."""
    pairs = _pair_inputs(eval_data.pairs, preset.correspondence_scale)
    return pairs, DenseArrays(torch.cat([pair[0] for pair in pairs]), key=f"{eval_data.name}-pairs")


def _evaluate_correspondence(eval_data, feature_models, preset, store, cache_dir, out_dir, results, resize) -> Path:
    pairs, images = _pair_images(eval_data, preset)
    for feature_model in feature_models:
        config = {
            "num_matches": preset.num_matches,
            "scale": preset.correspondence_scale,
            "size": preset.input_short_side,
            "position_resize": resize,
        }
        cache = _cache_path(cache_dir, feature_model, "correspondence", eval_data, config)
        if cache.is_file():
            results["correspondence"][feature_model.name] = load_json(cache, MetricsSchema).metrics
            continue
        patch = store(feature_model, images, resize).patch
        result = run_correspondence(
            [patch[2 * i : 2 * i + 2] for i in range(len(pairs))],
            [pair[1] for pair in pairs],
            [pair[2] for pair in pairs],
            [pair[3] for pair in pairs],
            [pair[4] for pair in pairs],
            preset.num_matches,
        )
        _write_json(cache, {"metrics": result.metrics, "model": feature_model.source, "task": "correspondence", "data": eval_data.name})
        results["correspondence"][feature_model.name] = result.metrics
    bins = [f"{low:g}-{high:g}" for low, high in ROTATION_BINS]
    return plot_grouped_bars(
        {name: [metrics[f"recall@10px_{b}deg"] for b in bins] for name, metrics in results["correspondence"].items()},
        [f"{b}°" for b in bins],
        out_dir / "correspondence_recall.png",
        f"Correspondence recall@10px by viewpoint change ({eval_data.name})",
        "recall",
    )


def _dense_panels(task: str, test: DenseArrays, predictions: dict[str, list[torch.Tensor]], eval_data: EvalData, folder: Path) -> list[Path]:
    """image | ground truth | one prediction per model, for the first test images, each labelled; the paths written."""
    if not predictions:
        return []
    colorize = {
        "depth": lambda value: colorize_depth(value, eval_data.max_depth),
        "normals": colorize_normals,
        "segmentation": colorize_labels,
    }[task]
    truth = {"depth": test.depth, "normals": test.normals, "segmentation": test.labels}[task]
    labels = ["image", "ground truth", *predictions]
    written = []
    for index in range(min(len(p) for p in predictions.values())):
        pictures = [test.images[index], colorize(truth[index])] + [colorize(p[index]) for p in predictions.values()]
        written.append(save_panel(pictures, folder / f"panel_{index:02d}.png", labels=labels))
    return written


def _pca_panels(
    test: DenseArrays, feature_models, store: _FeatureStore, count: int, folder: Path, resize: str
) -> list[Path]:
    """image | PCA colours of each model's patch features, for the first test images, each labelled; the paths written.

    The colours of one comparison share one PCA basis, fit on every shown map, so a colour means the
    same feature direction in every panel and for every model; models whose channel counts differ
    cannot share one and get one basis each, still shared across their images (the title says which).
    """
    shown = range(min(count, len(test)))
    maps = {fm.name: [store(fm, test, resize).patch[index] for index in shown] for fm in feature_models}
    if not maps or not shown:
        return []

    def basis(features: list[torch.Tensor]) -> PCAProjection:
        return fit_pca(torch.cat([feature.flatten(1) for feature in features], dim=1)[:, :, None])  # [C, N, 1]

    if len({features[0].shape[0] for features in maps.values()}) == 1:
        shared = basis([feature for features in maps.values() for feature in features])
        bases, title = dict.fromkeys(maps, shared), "PCA colours: one basis for all models and images"
    else:
        bases = {name: basis(features) for name, features in maps.items()}
        title = "PCA colours: one basis per model (channel counts differ), shared by its images"
    labels = ["image", *maps]
    written = []
    for index in shown:
        pictures = [pca_rgb(maps[name][index], projection=bases[name]) for name in maps]
        written.append(save_panel([test.images[index], *pictures], folder / f"pca_{index:02d}.png", title=title, labels=labels))
    return written


def _customized(preset: EvalPreset, steps: int | None, synthetic_size: str | None) -> EvalPreset:
    """The preset with the command line's overrides applied."""
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        preset = replace(
            preset,
            name=f"{preset.name}, steps {steps}",
            **{task: replace(getattr(preset, task), steps=steps, epochs=None) for task in ("depth", "normals", "segmentation")},
        )
    if synthetic_size is not None:
        try:
            size = tuple(int(part) for part in synthetic_size.lower().split("x"))
        except ValueError:
            size = ()
        if len(size) != 4 or min(size) < 1 or max(size[2:]) > MAX_IMAGE_SIDE:  # before any frame is allocated
            raise ValueError(
                f"--synthetic-size must be SxFxHxW (e.g. 4x4x48x64) with H and W at most {MAX_IMAGE_SIDE}, got {synthetic_size!r}"
            )
        preset = replace(preset, name=f"{preset.name}, synthetic {'x'.join(map(str, size))}", synthetic=size)
    return preset


def run(args: argparse.Namespace) -> int:
    tasks = TASKS if args.task == "all" else (args.task,)
    preset = _customized(PRESETS[args.preset], args.steps, args.synthetic_size)
    payload = evaluate(args.model, args.data, tasks, args.out, preset, args.concat_with, args.cache_dir, args.overwrite, args.resize)
    if not payload:  # another process than the main one of a launched run
        return 0
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {Path(args.out) / 'results.json'}, {Path(args.out) / 'results.md'} and {len(payload['pictures'])} pictures")
    return 0
