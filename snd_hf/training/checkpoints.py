"""Crash-safe, pickle-free training checkpoints: ``output_dir/checkpoints/step_{n}`` folders.

A checkpoint is written into a temporary folder of the package's one naming scheme
(:func:`snd_hf.files.make_temporary`) and moved into place by :func:`snd_hf.files.replace_path` only
once it is complete, so a run killed during a save leaves the previous checkpoint as the newest
complete one and stays resumable; the next run removes what the killed save left (its process is gone).

Its full training state is tensors in safetensors plus JSON; nothing in it is ever unpickled, so
resuming from a checkpoint folder someone else made cannot run code. (accelerate's
``save_state`` pickles registered objects and ``load_state`` unpickles them with
``weights_only=False``; ``weights_only=True`` itself had a code-execution hole before torch 2.6.)
One checkpoint folder holds::

    {role}.safetensors         the state dict of each module (student, teacher)
    optimizer.safetensors      the optimizer's per-parameter tensors ("{index}.{name}")
    trainer_state.json         step, optimizer param groups and scalars, scheduler, grad scaler, extras
    rng_state_{rank}.safetensors  each process's torch (CPU, CUDA), numpy and Python RNG states
    export/                    the native and original-layout exports of that step

Loading is strict: any other file, a missing or unexpected key, or a non-finite tensor is an error
naming the file.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import destination_of, explain_write_errors, is_temporary, live_temporaries, make_temporary, replace_path
from ..schema import read_json
from .guards import first_non_finite

_STEP_DIR = re.compile(r"^step_(\d+)$")
_RNG_FILE = re.compile(r"^rng_state_(\d+)\.safetensors$")
FORMAT = "snd-hf-training-state"
FORMAT_VERSION = 1
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
EXPORT_DIR = "export"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_step(path: str | Path) -> int:
    """The step of a ``step_{n}`` folder."""
    match = _STEP_DIR.match(Path(path).name)
    if match is None:
        raise ValueError(f"checkpoint folder must be named step_<n>, got {str(path)!r}.")
    return int(match.group(1))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(output_dir: str | Path, name: str) -> Path | None:
    """``"latest"`` → the newest complete checkpoint (None if there is none); else the given folder."""
    if name == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(name)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint {name!r} is not a checkpoint folder (or 'latest').")
    checkpoint_step(path)
    return path


def temporary_checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``step`` (:func:`snd_hf.files.make_temporary`,
    which first removes what killed saves left). Made by the main process only."""
    return make_temporary(checkpoint_root(output_dir) / f"step_{step}", directory=True)


def temporary_checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """The temporary folder the main process made for the checkpoint of ``step``, as every process
    finds it (:func:`snd_hf.files.live_temporaries`).

    Raises:
        RuntimeError: there is no such folder, or more than one (another live trainer in ``output_dir``).
    """
    found = live_temporaries(checkpoint_root(output_dir) / f"step_{step}")
    if len(found) != 1:
        raise RuntimeError(f"expected one temporary folder of checkpoint step_{step} in {checkpoint_root(output_dir)}, found {len(found)}")
    return found[0]


def finalize_checkpoint(tmp: Path, total_limit: int | None = None) -> Path:
    """Rename a complete temporary checkpoint into place, then drop the oldest beyond ``total_limit``
    (None keeps all; it must be >= 1, so the checkpoint just written is always kept)."""
    if not is_temporary(tmp):
        raise ValueError(f"tmp must be a folder from temporary_checkpoint_dir, got {str(tmp)!r}.")
    if total_limit is not None and total_limit < 1:
        raise ValueError(f"checkpoints_total_limit must be >= 1 or None (keep all), got {total_limit}.")
    final = destination_of(tmp)
    # The same step saved again (resumed from an older checkpoint): the older complete checkpoints
    # stay in place meanwhile, so "latest" always finds one.
    replace_path(tmp, final)
    if total_limit is not None:
        for old in list_checkpoints(final.parent.parent)[:-total_limit]:
            shutil.rmtree(old)
    return final


# -------------------------------------------------------------------------------------------------
# The training state, without pickle
# -------------------------------------------------------------------------------------------------
def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state dict as (tensors for safetensors, the rest for JSON)."""
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], saved: dict, live: torch.optim.Optimizer) -> dict:
    """The inverse of :func:`_split_optimizer_state`; tuples (Adam's betas) come back as tuples."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = tensor
    for index, values in saved["state"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group, live_group in zip(saved["param_groups"], live.param_groups):
        groups.append({k: tuple(v) if isinstance(live_group.get(k), tuple) else v for k, v in group.items()})
    groups.extend(saved["param_groups"][len(groups):])  # a count mismatch is load_state_dict's error
    return {"state": state, "param_groups": groups}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's RNG states as tensors and JSON metadata."""
    version, mt_state, gauss_next = random.getstate()
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "python_mt": torch.tensor(mt_state, dtype=torch.int64),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
    }
    if torch.cuda.is_available():
        for device, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{device}"] = cuda_state
    metadata = {
        "python": json.dumps({"version": version, "gauss_next": gauss_next}),
        "numpy": json.dumps(
            {"algorithm": algorithm, "position": position, "has_gauss": has_gauss, "cached_gaussian": cached_gaussian}
        ),
    }
    return tensors, metadata


def _set_rng_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    python, numpy_state = json.loads(metadata["python"]), json.loads(metadata["numpy"])
    random.setstate((python["version"], tuple(tensors["python_mt"].tolist()), python["gauss_next"]))
    np.random.set_state(
        (
            numpy_state["algorithm"],
            tensors["numpy_keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        cuda_states = [tensors[f"torch_cuda_{d}"] for d in range(torch.cuda.device_count()) if f"torch_cuda_{d}" in tensors]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_training_state(
    directory: str | Path,
    *,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
    process_index: int = 0,
    is_main_process: bool = True,
) -> None:
    """Write the resumable state of a run into ``directory`` (an existing, empty temporary folder).

    Every process calls it: each writes its RNG states; the main process also writes the modules,
    optimizer, scheduler, scaler and ``trainer_state``.

    Args:
        directory: the checkpoint folder being written.
        modules: role → unwrapped module (e.g. ``{"student": ..., "teacher": ...}``).
        optimizer: the (possibly accelerate-wrapped) optimizer.
        scheduler: the learning-rate scheduler.
        trainer_state: small JSON-serialisable values (the step, counters).
        scaler: the fp16 grad scaler, if any.
        process_index: this process's rank.
        is_main_process: whether this process writes the shared files.

    Raises:
        TypeError: a value of the state is neither a tensor nor JSON-serialisable (nothing is pickled).
        OutOfRoomError: the disk filled up or a size limit was reached (earlier checkpoints are untouched).
        ValueError: a tensor (weights, optimizer moments) holds NaN or inf; nothing non-finite is written.
    """
    directory = Path(directory)
    # Running out of room is one OutOfRoomError naming the checkpoint, however safetensors reports it.
    with explain_write_errors(destination_of(directory)):
        _write_training_state(directory, modules, optimizer, scheduler, trainer_state, scaler, process_index, is_main_process)


def _write_training_state(
    directory: Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: dict[str, Any],
    scaler: torch.amp.GradScaler | None,
    process_index: int,
    is_main_process: bool,
) -> None:
    tensors, metadata = _rng_state()
    _save_finite(tensors, directory / f"rng_state_{process_index}.safetensors", metadata=metadata)
    if not is_main_process:
        return
    for role, module in modules.items():
        _save_finite(_cpu_state(module), directory / f"{role}.safetensors")
    optimizer_tensors, optimizer_rest = _split_optimizer_state(optimizer.state_dict())
    _save_finite(optimizer_tensors, directory / OPTIMIZER_FILE)
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **trainer_state,
        "optimizer": optimizer_rest,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    try:
        text = json.dumps(state, indent=1, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"the training state cannot be written as JSON ({error}); nothing is pickled.") from None
    (directory / STATE_FILE).write_text(text)


def _save_finite(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``save_file``, refusing a tensor holding NaN or inf (a checkpoint that could not be resumed)."""
    name = first_non_finite(tensors.items())
    if name is not None:
        raise ValueError(f"refusing to write {path}: {name!r} holds non-finite values (earlier checkpoints are untouched).")
    save_file(tensors, path, metadata=metadata)


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors (on the CPU) and metadata, or ValueError naming the file."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}).") from None
    name = first_non_finite(tensors.items())
    if name is not None:
        raise ValueError(f"{path} holds non-finite values in {name!r}; refusing to resume from it.")
    return tensors, metadata


def check_checkpoint_files(directory: str | Path, roles: list[str]) -> None:
    """Refuse a folder that is not a complete checkpoint of this format (before anything is read)."""
    directory = Path(directory)
    expected = {f"{role}.safetensors" for role in roles} | {OPTIMIZER_FILE, STATE_FILE}
    present = {p.name for p in directory.iterdir()}
    unknown = sorted(name for name in present - expected - {EXPORT_DIR} if not _RNG_FILE.match(name))
    if unknown:
        raise ValueError(
            f"checkpoint {directory} holds files this trainer never writes ({', '.join(unknown)}); it is not a "
            "snd-hf training checkpoint (older ones were pickled and are not resumed), so it is not loaded."
        )
    missing = sorted(expected - present)
    if missing:
        raise ValueError(f"checkpoint {directory} is incomplete: {', '.join(missing)} missing.")


def load_training_state(
    directory: str | Path,
    *,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None = None,
    process_index: int = 0,
) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote, strictly; returns the ``trainer_state`` values.

    Raises:
        ValueError: the folder holds unknown files, misses one, a file is not valid safetensors/JSON,
            a tensor is not finite, or a state dict has missing/unexpected keys (each naming the file).
    """
    directory = Path(directory)
    check_checkpoint_files(directory, list(modules))
    state = read_json(directory / STATE_FILE)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{directory / STATE_FILE} is not a snd-hf training state (no format {FORMAT!r}).")
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / STATE_FILE} has format_version {state.get('format_version')!r}; expected {FORMAT_VERSION}.")
    if not isinstance(state.get("step"), int) or state["step"] < 0:
        raise ValueError(f"{directory / STATE_FILE} has no valid step ({state.get('step')!r}).")

    for role, module in modules.items():
        path = directory / f"{role}.safetensors"
        tensors, _ = _read_tensors(path)
        try:
            # Strict, checked below, so that the error names the file, the role and the keys.
            result = module.load_state_dict(tensors, strict=False)
        except RuntimeError as error:  # shape mismatches
            raise ValueError(f"{path} does not match the {role} of this config: {' '.join(str(error).split())}") from None
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{path} does not match the {role} of this config: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]} ({len(result.missing_keys)} and "
                f"{len(result.unexpected_keys)} in all)."
            )
    optimizer_tensors, _ = _read_tensors(directory / OPTIMIZER_FILE)
    try:
        optimizer.load_state_dict(_join_optimizer_state(optimizer_tensors, state["optimizer"], optimizer))
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{directory} does not match this run's optimizer or schedule: {error}") from None

    rng_path = directory / f"rng_state_{process_index}.safetensors"
    if rng_path.is_file():
        try:
            _set_rng_state(*_read_tensors(rng_path))
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{rng_path} does not hold valid RNG states ({type(error).__name__}: {error}).") from None
    else:  # resumed with more processes than saved: the extra ones keep their seeded state
        print(f"warning: {rng_path.name} not in {directory}; process {process_index} keeps its seeded RNG state.")
    return {k: v for k, v in state.items() if k not in ("format", "format_version", "optimizer", "scheduler", "scaler")}
