"""kill -9 at every file move of every writing command: the output is the old complete set or the new
complete set, and what the kill left is cleared by the next run.

Each command runs in a subprocess whose ``os.replace`` / ``os.rename`` (every commit point of the
package's writers: a file or folder moved into place, a manifest written, a folder swapped) count
their calls and SIGKILL the process just before the N-th. For each command an "old" run writes the
folder, a reference "new" run replaces it (another model, seed or setting); then for each kill point
the old folder is run into by the new command killed at that move, put in order with
``run_folder.recover`` (what the next run does first) and compared file by file with the two
references; for some points the whole new command is then run again, which must give the new set
and leave no temporary.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import snd_hf
from snd_hf import SnDConfig, SnDModel
from snd_hf.data.synthetic import generate_scenes
from snd_hf.files import TEMPORARY_TAG
from snd_hf.loading import save_original_checkpoint
from snd_hf.run_folder import LOCK_NAME, MANIFEST_NAME, recover

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = str(Path(snd_hf.__file__).parent / "assets" / "default")
FIT = ["--appearance-steps", "4", "--feature-steps", "4", "--init-stride", "2", "--init-views", "2", "--hold-out", "4",
       "--feature-dim", "4", "--device", "cpu"]  # fmt: skip
EVAL = ["--data", "synthetic", "--steps", "15", "--synthetic-size", "4x3x42x56"]
TRAIN = ["--save_steps", "2", "--image_size", "[28,42]", "--synthetic_scenes", "1", "--synthetic_frames", "6",
         "--synthetic_size", "[28,42]", "--batch_size", "1"]  # fmt: skip
PRETRAIN = ["--steps", "2", "--batch_size", "2", "--scenes", "1", "--frames", "2", "--hidden_size", "32", "--layers", "1", "--heads", "1"]
# An output named FOLDER#export: the trainer's final export in FOLDER (its checkpoints, config.yaml and
# loss log aside: each checkpoint is a set of its own, config.yaml one atomic file, the log a log).
EXPORT = "#export"
_RUN_FILES = ("checkpoints", "logs", "losses.jsonl", "config.yaml")

# A warm process (imports done once) that forks one child per job: the child runs `snd ARGV` with
# os.replace / os.rename killing it with SIGKILL before move number KILL_AT, its output going to LOG.
SERVER = """
import json, os, sys
import atexit, importlib.util
import snd_hf.cli, snd_hf.convert, snd_hf.data.synthetic, snd_hf.demo, snd_hf.eval.suite, snd_hf.extract, snd_hf.fields.cli
import snd_hf.training.loop
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from faults import kill_before_move
scripts = {}
for name in ("train.py", "pretrain_2d.py"):  # the training scripts: SCRIPT ARGV... runs SCRIPT's main(ARGV)
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(sys.argv[1], "training", name))
    scripts[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scripts[name])
for line in sys.stdin:
    job = json.loads(line)
    child = os.fork()
    if child == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        moves = kill_before_move(job["kill_at"])
        try:
            argv = job["argv"]
            status = scripts[argv[0]].main(argv[1:]) if argv[0] in scripts else snd_hf.cli.main(argv)
        except BaseException:
            import traceback
            traceback.print_exc()
            status = 3
        atexit._run_exitfuncs()  # what a process's normal end runs (the trainer releases its lock)
        sys.stdout.flush()
        sys.stderr.write(f"\\nMOVES={moves()}\\n")
        sys.stderr.flush()
        os._exit(status or 0)
    _, wait = os.waitpid(child, 0)
    print(-os.WTERMSIG(wait) if os.WIFSIGNALED(wait) else os.WEXITSTATUS(wait), flush=True)
"""


class Server:
    def __init__(self, logs: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(REPO)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.logs, self.jobs = logs, 0

    def __call__(self, argv: list[str], kill_at: int = -1) -> subprocess.CompletedProcess:
        self.jobs += 1
        log = self.logs / f"job_{self.jobs}.log"
        self.process.stdin.write(json.dumps({"argv": argv, "kill_at": kill_at, "log": str(log)}) + "\n")
        self.process.stdin.flush()
        status = int(self.process.stdout.readline())
        return subprocess.CompletedProcess(argv, status, "", log.read_text(errors="replace"))


@pytest.fixture(scope="module")
def snd(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("logs"))
    yield server
    server.process.stdin.close()
    server.process.wait(timeout=60)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state(folder: Path) -> dict[str, str] | None:
    """Every file of ``folder`` by relative path and digest (the run folder's own bookkeeping aside);
    for ``FOLDER#export``, the files of the trainer's export in FOLDER."""
    export = str(folder).endswith(EXPORT)
    folder = Path(str(folder).removesuffix(EXPORT))
    if not folder.exists():
        return None
    return {
        path.relative_to(folder).as_posix(): digest(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in (MANIFEST_NAME, LOCK_NAME)
        and not (export and path.relative_to(folder).parts[0] in _RUN_FILES)
    }


def which(now: dict | None, old: dict | None, new: dict | None) -> str | None:
    """For one output: "old" when ``now`` is the old set byte for byte, "new" when it holds the new
    set's files and none of the old run's (some outputs are not byte-reproducible: safetensors
    metadata order, randomised PCA), None for anything else (a mix, or files missing)."""
    if now == old:
        return "old"
    before, after = old or {}, new or {}
    if now is None or now.keys() != after.keys():
        return None
    if any(digest == before.get(path) and after[path] != before.get(path) for path, digest in now.items()):
        return None
    return "new"


def leftovers(root: Path) -> list[str]:
    """Temporaries of the package's naming, or folders moved aside, anywhere below ``root``."""
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if TEMPORARY_TAG in p.name or p.name.endswith(".old")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, snd):
    root = tmp_path_factory.mktemp("inputs")
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = SnDModel(SnDConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, image_size=56)).eval()
        model.save_pretrained(root / f"m{seed}")
        save_original_checkpoint(model, root / f"m{seed}.pth")
    for seed, name in ((0, "a.png"), (1, "b.png")):
        pixels = torch.Generator().manual_seed(seed)
        Image.fromarray((torch.rand(40, 60, 3, generator=pixels) * 255).byte().numpy()).save(root / name)
    scenes = generate_scenes(root / "data", 1, 8, 24, 32, seed=1, progress=False, glossy=True)
    return root, scenes / "scenes" / "synth_0000"


def fitted_field(inputs, snd) -> None:
    """The field the `field segment|edit` runs read, fitted once (only those commands need it)."""
    root, scene = inputs
    if not (root / "room.field").exists():
        assert snd(["field", "fit", str(scene), "--model", EMBEDDED, "--out", str(root / "room.field"), *FIT]).returncode == 0


def commands(inputs) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """command -> (old argv, new argv, output folders), ``{out}`` standing for the working folder."""
    root, scene = inputs
    m0, m1, a, b, field = (str(root / name) for name in ("m0", "m1", "a.png", "b.png", "room.field"))
    return {
        "extract": (
            ["extract", a, "--model", m0, "--out", "{out}/features", "--shortest-edge", "28"],
            ["extract", a, b, "--model", m1, "--out", "{out}/features", "--shortest-edge", "28", "--overwrite"],
            ["features"],
        ),
        "demo": (
            ["demo", "--images", a, "--model", m0, "--out", "{out}/demo", "--shortest-edge", "28"],
            ["demo", "--images", a, b, "--model", m1, "--out", "{out}/demo", "--shortest-edge", "28"],
            ["demo"],
        ),
        "convert": (
            ["convert", str(root / "m0.pth"), "{out}/native"],
            ["convert", str(root / "m1.pth"), "{out}/native", "--overwrite"],
            ["native"],
        ),
        "synth": (
            ["synth", "--out", "{out}/data", "--scenes", "1", "--frames", "2", "--size", "16x16", "--seed", "0"],
            ["synth", "--out", "{out}/data", "--scenes", "1", "--frames", "3", "--size", "16x16", "--seed", "1"],
            ["data"],
        ),
        "eval": (
            ["eval", "depth", "--model", f"a={m0}", *EVAL, "--out", "{out}/eval"],
            ["eval", "depth", "--model", f"a={m1}", *EVAL, "--out", "{out}/eval", "--overwrite"],
            ["eval"],
        ),
        "field fit": (
            ["field", "fit", str(scene), "--model", EMBEDDED, "--out", "{out}/room.field", *FIT, "--seed", "0"],
            ["field", "fit", str(scene), "--model", EMBEDDED, "--out", "{out}/room.field", *FIT, "--seed", "1"],
            ["room.field"],
        ),
        "field segment": (
            ["field", "segment", field, "--view", "1", "--click", "16,16", "--out", "{out}/segment"],
            ["field", "segment", field, "--view", "2", "--click", "8,8", "--out", "{out}/segment", "--overwrite"],
            ["segment"],
        ),
        "train.py": (
            ["train.py", *TRAIN, "--dataset_path", str(root / "train_data"), "--output_dir", "{out}/run", "--max_steps", "2"],
            ["train.py", *TRAIN, "--dataset_path", str(root / "train_data"), "--output_dir", "{out}/run", "--max_steps", "4",
             "--resume_from_checkpoint", "latest"],
            ["run" + EXPORT, "run/checkpoints/step_2", "run/checkpoints/step_4"],
        ),
        "pretrain_2d.py": (
            ["pretrain_2d.py", "--out", "{out}/pretrained", *PRETRAIN, "--seed", "0"],
            ["pretrain_2d.py", "--out", "{out}/pretrained", *PRETRAIN, "--seed", "1"],
            ["pretrained"],
        ),
        "field edit": (
            ["field", "edit", field, "--select", "1:16,16", "--recolor", "0.9,0.1,0.1", "--out", "{out}/edit", "--save-field", "{out}/edited.field"],
            ["field", "edit", field, "--select", "1:16,16", "--recolor", "0.1,0.9,0.1", "--out", "{out}/edit", "--save-field", "{out}/edited.field", "--overwrite"],
            ["edit", "edited.field"],
        ),
    }  # fmt: skip


def _argv(template: list[str], out: Path) -> list[str]:
    return [word.replace("{out}", str(out)) for word in template]


# Commands whose every run is long: a sample of their kill points (first, last, evenly spaced ones).
SAMPLED = {"eval": 6, "field fit": 6, "train.py": 12}


SCRIPTS = ["train.py", "pretrain_2d.py"]  # training/*.py
SWEPT = ["extract", "demo", "convert", "synth", "eval", "field fit", "field segment", "field edit", *SCRIPTS]


def test_every_snd_command_is_swept():
    """A new `snd` command must join the sweep (and so go through the shared writer and run folder)."""
    import argparse

    from snd_hf.cli import COMMANDS
    from snd_hf.commands.field import add_arguments

    assert {command.split()[0] for command in SWEPT if command not in SCRIPTS} == set(COMMANDS)
    assert sorted(SCRIPTS) == sorted(path.name for path in (REPO / "training").glob("*.py"))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    field_commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices
    assert {command for command in SWEPT if command.startswith("field ")} == {f"field {name}" for name in field_commands}


@pytest.mark.slow
@pytest.mark.parametrize("command", SWEPT)
def test_kill_at_every_move_leaves_the_old_or_the_new_set(inputs, snd, tmp_path, command, record_property):
    if command in ("field segment", "field edit"):
        fitted_field(inputs, snd)
    old_argv, new_argv, outputs = commands(inputs)[command]
    # Every run happens in one folder, `work` (a run records where it ran: the trainer's resume refuses
    # a moved output_dir), set up each time from a snapshot: `base` after the old run.
    work, base, reference = tmp_path / "work", tmp_path / "base", tmp_path / "reference"

    def run_from(snapshot: Path | None, argv: list[str], kill_at: int = -1) -> subprocess.CompletedProcess:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(snapshot, work, symlinks=True) if snapshot else work.mkdir()
        return snd(_argv(argv, work), kill_at=kill_at)

    assert run_from(None, old_argv).returncode == 0
    shutil.copytree(work, base, symlinks=True)
    old = {name: state(base / name) for name in outputs}
    finished = run_from(base, new_argv)
    assert finished.returncode == 0, finished.stderr
    shutil.copytree(work, reference, symlinks=True)
    new = {name: state(reference / name) for name in outputs}
    assert new != old
    moves = int(re.search(r"MOVES=(\d+)", finished.stderr).group(1))
    points = list(range(moves))
    if command in SAMPLED:
        count = SAMPLED[command]
        points = sorted({0, 1, moves - 2, moves - 1, *points[:: max(1, moves // count)]} & set(points))
    seen = {"old": 0, "new": 0}
    for point in points:
        killed = run_from(base, new_argv, kill_at=point)
        assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-2000:])
        for name in outputs:
            recover(work / name.removesuffix(EXPORT))  # what the next run does first
        # Each output (a command may write two: `field edit --out --save-field`) is one set or the other.
        sides = {name: which(state(work / name), old[name], new[name]) for name in outputs}
        assert None not in sides.values(), f"{command}: kill before move {point} of {moves} left a mixed output: {sides}"
        for side in sides.values():
            seen[side] += 1
        assert not leftovers(work), (point, leftovers(work))
        if point in (points[0], points[len(points) // 2], points[-1]):  # the next run completes the new set
            again = snd(_argv(new_argv, work))
            assert again.returncode == 0, again.stderr
            for name in outputs:
                now = state(work / name)
                assert now == new[name] or which(now, old[name], new[name]) == "new", (point, name, sorted(set(now or {}) ^ set(new[name] or {})),
                    sorted(path for path, sha in (now or {}).items() if sha == (old[name] or {}).get(path) != new[name].get(path)))
            assert not leftovers(work)
            assert not [path for path in work.rglob(LOCK_NAME)], "a finished run leaves no lock file"
    summary = f"{command}: {len(points)} kills of {moves} moves -> outputs found {seen['old']}x old set, {seen['new']}x new set"
    record_property("kill_points", summary)
    print(summary)
    # Kills before the commit point keep the old set; those after it (none for a single swap, whose
    # last move is its commit) leave the new one.
    assert seen["old"]
