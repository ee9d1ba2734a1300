"""Every command and code block of README.md runs as written, on the CPU, in a temporary folder.

The test reads README.md (tests/readme.py), so a new block or command is picked up by itself. In
README order, in one temporary folder (a checkout's ``training/`` linked in, as a user runs
them from the checkout), it runs:

- each command of every ``bash`` block, through bash with this environment's ``snd``,
  ``python`` and ``accelerate`` first on ``PATH``, the Hub pointed at the emulator of
  tests/hub_emulator.py and no GPU;
- each ``python`` block as a script, in a fresh interpreter;
- each command in the prose (an inline code span starting with ``snd``, ``python``,
  ``accelerate`` or ``pip``) that is not part of a block command.

The tables below are the only changes to what README says. When README changes, change them
with it: every entry must still match README (a stale entry fails), and anything README reads
from outside that they do not list fails loudly, naming the path.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_emulator import HubEmulator
from PIL import Image
from readme import (
    CI_SCRIPT,
    code_blocks,
    inline_commands,
    is_install,
    readme_text,
    shell_commands,
    words,
)
from scipy.io import savemat

from snd_hf import SnDConfig, SnDImageProcessor, SnDModel
from snd_hf.data.synthetic import generate_scenes
from snd_hf.demo import DEMO_IMAGES
from snd_hf.hub import SND_HUB_REPO, VARIANT_FILES
from snd_hf.loading import to_original_state_dict
from snd_hf.splatting import MVSplatLifter

REPO_ROOT = Path(__file__).resolve().parents[1]

# =============================================================================================
# The tables
# =============================================================================================

# External inputs: README text -> (what stands in for it, the StandIns method that makes it). A
# path is made at the same place in the temporary folder; an absolute path is moved under
# ``external/`` there (besides SHORTER, the only change this test makes to a command). Hub ids
# are repos of the emulator.
EXTERNAL: dict[str, tuple[str, str]] = {
    SND_HUB_REPO: ("the published repo: its small and base (blending) files in the original layout, real ViT-S/B shapes, random weights", "published_repo"),
    "you/snd-tiny": ("a repo of the Hub emulator, created by --push_to_hub", "nothing"),
    "photo.jpg": ("a 300x400 JPEG of a generated room", "photo"),
    "more/*.png": ("two PNGs of generated rooms", "more_pngs"),
    "dinov2_small_snd.pth": ("a ViT-S/14 state dict in the original layout, random weights", "vit_small_original"),
    "dinov2_vits14_pretrain.pth": ("a ViT-S/14 state dict in the original layout, random weights", "vit_small_original"),
    "path/to/snd_dir_or_original.pth": ("a ViT-S/14 state dict in the original layout, random weights", "vit_small_original"),
    "re10k.ckpt": ("MVSplat's Lightning layout ({'state_dict': {'encoder.*'}}), random weights", "mvsplat_checkpoint"),
    "/data/scannetpp": ("one generated scene (12 frames, 96x128) in the ScanNet++ layout", "scannetpp"),
    "./snd-vits14": ("a tiny native checkpoint (hidden 128, 2 layers)", "tiny_native"),
    "dinov2_vits14.pth": ("a tiny original-layout state dict (hidden 128, 2 layers)", "tiny_original"),
    "/data/nyu": ("NYUv2 in Probe3D's layout: 3 GeoNet .mat files (480x640) and a 2-image test pickle", "nyu"),
    "/data/ADEChallengeData2016": ("ADE20K's layout: 2 training and 1 validation image, 48x64", "ade20k"),
    "/data/scannet_test_1500": ("ScanNet-1500's layout: one pair, 48x64, 30 degrees apart", "scannet1500"),
}

# Paths that README commands write (they need not exist before the command).
WRITTEN = {"features/", "snd-small/", "snd-small.pth", "data/synthetic", "data/synthetic_hf", "eval_out", "eval_nyu", "eval_ade20k", "eval_scannet1500", "outputs/snd-tiny-2proc", "outputs/pretrained_2d", "outputs/snd-tiny-hub", "data/glossy", "room.field", "room-segment", "room-segments", "room-edit"}

# Runs too long for CI: README command (exact, continuation lines joined) -> (arguments appended, why).
SHORTER: dict[str, tuple[str, str]] = {
    "snd extract photo.jpg more/*.png --model david-shavin/SnD --size base --out features/": (
        "--shortest-edge 224",
        "ViT-B/14 at 448 px, three times, on 2 CPU cores",
    ),
    "accelerate launch training/train.py --config training/configs/scannetpp_vits14.yaml "
    "--dataset_path /data/scannetpp --model_path dinov2_vits14_pretrain.pth --mvsplat_checkpoint re10k.ckpt": (
        "--max_steps 1 --image_size [48,64]",
        "300k steps of ViT-S with MVSplat at 576x880",
    ),
    "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 training/train.py "
    "--output_dir outputs/snd-tiny-2proc": ("--max_steps 4", "the default run twice over, on 2 processes"),
    "python training/train.py --push_to_hub --hub_model_id you/snd-tiny --output_dir outputs/snd-tiny-hub": (
        "--max_steps 2",
        "the default run again, only to be pushed",
    ),
    "snd eval all --model init=init:outputs/snd-synthetic-tiny --model snd=outputs/snd-synthetic-tiny --data synthetic "
    "--out eval_out": (
        "--steps 20 --synthetic-size 4x3x48x64",
        "probes trained to their stopping rule (at most 1500 steps) per task and model, on 192 generated 96x128 frames",
    ),
    "snd field fit data/glossy/scenes/synth_0000 --model snd_hf/assets/default --hold-out 4 --out room.field": (
        "--appearance-steps 8 --feature-steps 8",
        "300 + 300 optimisation steps over 24 views",
    ),
    "python training/train.py": ("--max_steps 100", "the default run's 2000 steps (tests/training/test_train.py runs it whole)"),
    "python training/train.py --resume_from_checkpoint latest": ("--max_steps 110", "resuming the 2000-step default run"),
    "python training/pretrain_2d.py --out outputs/pretrained_2d": ("--steps 10 --scenes 4", "the 2D pre-training's 600 steps"),
    "snd eval depth --model snd=./snd-vits14 --data nyuv2=/data/nyu --preset paper --out eval_nyu": ("--steps 2", "the paper's 307,200 probe steps"),
    "snd eval segmentation --model snd=./snd-vits14 --data ade20k=/data/ADEChallengeData2016 --concat-with dinov2_vits14.pth "
    "--out eval_ade20k": (
        "--steps 2",
        "150 probe steps",
    ),
}

# Commented-out alternatives of python blocks, run too, in a second run of their block: the
# comment line -> (the line it replaces, (text, shorter text) for a long run, why).
VARIANTS: dict[str, tuple[str, tuple[str, str], str]] = {
    '# teacher = SplatTeacher(MVSplatLifter.from_checkpoint("re10k.ckpt"), blending=0.5)  # MVSplat, any image size': (
        "teacher = SplatTeacher(DepthLifter(), blending=0.5)",
        ("image_size=(224, 308)", "image_size=(56, 77)"),  # still not multiples of MVSplat's 16
        "the full MVSplat encoder at 224x308 took 91 s here (2 busy CPU cores)",
    ),
}

# Commands that do not run here: command -> (why, the name of the check that the reason still holds).
NOT_RUN: dict[str, tuple[str, str]] = {
    "pip install torch==2.13.0": ("installs into the environment; .ci/run runs it in a fresh venv", "run_by_ci"),
    'pip install -e ".[test]"': ("installs into the environment; .ci/run runs it in a fresh venv", "run_by_ci"),
    "python -m pytest -q": ("is this test suite's default tier; .ci/run runs it", "run_by_ci"),
    "python -m pytest -q -m slow": ("is this test suite's slow tier; .ci/run runs it", "run_by_ci"),
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": (
        "needs PyTorch's wheel index, which CI cannot reach; it must pin the torch that CI installs",
        "same_torch_as_ci",
    ),
}

# Fenced blocks that are not code to run: language -> why.
NOT_CODE = {"bibtex": "the citation"}


# =============================================================================================
# Stand-ins
# =============================================================================================
def _original_bytes(config: SnDConfig, seed: int) -> bytes:
    torch.manual_seed(seed)
    model = SnDModel(config)
    buffer = io.BytesIO()
    torch.save(to_original_state_dict(model.state_dict(), config), buffer)
    return buffer.getvalue()


def _room(index: int, height: int, width: int) -> Image.Image:
    picture = Image.open(DEMO_IMAGES / f"view{index}.png").convert("RGB")
    return picture.resize((width, height), Image.BILINEAR)


def _write_rgb(path: Path, height: int, width: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _write_depth_mm(path: Path, millimetres: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(millimetres.astype(np.uint16)).save(path)


class StandIns:
    """Makers of the stand-ins named in ``EXTERNAL`` (each writes ``destination``)."""

    def __init__(self, hub: HubEmulator):
        self.hub = hub

    def nothing(self, destination: Path) -> None:
        pass

    def published_repo(self, destination: Path) -> None:
        for size in ("small", "base"):
            config = SnDConfig.from_variant(size, True)
            self.hub.add_file(SND_HUB_REPO, VARIANT_FILES[(size, True)], _original_bytes(config, seed=1))

    def photo(self, destination: Path) -> None:
        _room(0, 300, 400).save(destination, quality=90)

    def more_pngs(self, destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        for index in (1, 2):
            _room(index, 240, 320).save(destination.parent / f"view{index}.png")

    def vit_small_original(self, destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(_original_bytes(SnDConfig.from_variant("small", True), seed=2))

    def mvsplat_checkpoint(self, destination: Path) -> None:
        torch.manual_seed(3)
        encoder = MVSplatLifter().state_dict()
        torch.save({"state_dict": {f"encoder.{key}": value for key, value in encoder.items()}}, destination)

    def scannetpp(self, destination: Path) -> None:
        generate_scenes(destination, num_scenes=1, num_frames=12, height=96, width=128, seed=5, progress=False)

    def tiny_native(self, destination: Path) -> None:
        torch.manual_seed(4)
        SnDModel(SnDConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2)).save_pretrained(destination)
        SnDImageProcessor().save_pretrained(destination)

    def tiny_original(self, destination: Path) -> None:
        destination.write_bytes(_original_bytes(SnDConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2), seed=6))

    def nyu(self, destination: Path) -> None:
        rng = np.random.default_rng(7)
        (destination / "nyuv2_geonet").mkdir(parents=True)
        for index in range(3):  # GeoNet: every 20th file is validation, the rest training
            savemat(
                destination / "nyuv2_geonet" / f"room_{index:03d}.mat",
                {
                    "img": rng.uniform(-120, 130, (480, 640, 3)).astype(np.float32),
                    "depth": rng.uniform(0.5, 9.0, (480, 640)).astype(np.float32),
                    "norm": np.tile(np.float32([0, 0, -1]), (480, 640, 1)),
                },
            )
        test = {
            "images": rng.integers(0, 256, (2, 3, 480, 640), dtype=np.uint8),
            "depths": rng.uniform(0.5, 9.0, (2, 480, 640)).astype(np.float32),
            "snorms": np.tile(np.float32([0, 0, -1])[:, None, None], (2, 1, 480, 640)),
            "test_indices": np.array([[0], [1]]),
        }
        (destination / "nyuv2_test.pkl").write_bytes(pickle.dumps(test))

    def ade20k(self, destination: Path) -> None:
        rng = np.random.default_rng(8)
        for split, count in (("training", 2), ("validation", 1)):
            for index in range(count):
                _write_rgb(destination / "images" / split / f"ADE_{split}_{index}.jpg", 48, 64, seed=index)
                labels = destination / "annotations" / split / f"ADE_{split}_{index}.png"
                labels.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 151, (48, 64), dtype=np.uint8)).save(labels)

    def scannet1500(self, destination: Path) -> None:
        scene = destination / "scene0707_00"
        for frame in (15, 585):
            _write_rgb(scene / "color" / f"{frame}.jpg", 48, 64, seed=frame)
            _write_depth_mm(scene / "depth" / f"{frame}.png", np.full((48, 64), 1500))
        angle = np.radians(30.0)
        pose = np.eye(4)
        pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        (scene / "pose").mkdir()
        np.savetxt(scene / "pose" / "15.txt", np.eye(4))
        np.savetxt(scene / "pose" / "585.txt", pose)
        np.savez(destination / "test.npz", name=np.array([[707, 0, 15, 585]]))
        np.savez(destination / "intrinsics.npz", scene0707_00=np.array([[48.0, 0, 32.0], [0, 48.0, 24.0], [0, 0, 1]]))


# =============================================================================================
# Checks that a NOT_RUN reason still holds
# =============================================================================================
def _ci_lines() -> list[str]:
    return [line.strip() for line in CI_SCRIPT.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def run_by_ci(command: str) -> None:
    assert command in _ci_lines(), f".ci/run does not run README's {command!r}"


def same_torch_as_ci(command: str) -> None:
    pin = next(word for word in words(command) if word.startswith("torch=="))
    assert f"pip install {pin}" in _ci_lines(), f"README's CPU-wheel line pins {pin}, CI installs another torch"


# =============================================================================================
# Reading README into runs
# =============================================================================================
@dataclass
class Run:
    """One thing README tells the user to run."""

    kind: str  # "shell" or "python"
    text: str  # as written in README
    line: int
    source: str  # where in README, for messages

    @property
    def key(self) -> str:
        """The command without its trailing comment (a python block: its code)."""
        return re.sub(r"\s+#[^'\"]*$", "", self.text).strip() if self.kind == "shell" else self.text

    def variants(self) -> list[str]:
        """The code to run: as written, plus each commented-out alternative of ``VARIANTS``."""
        texts = [self.text]
        for comment, (replaced, (long, short), _) in VARIANTS.items() if self.kind == "python" else ():
            lines = self.text.splitlines(keepends=True)
            if comment + "\n" not in lines:
                continue
            uncommented = re.sub(r"\s+#[^'\"]*$", "", comment.lstrip("# ")) + "\n"
            lines = [uncommented if line == comment + "\n" else line for line in lines if not line.startswith(replaced)]
            texts.append("".join(lines).replace(long, short))
        return texts


PATH_LIKE = re.compile(r"^[\w.~-]*(/[\w.*~{}-]*)+$|^[\w.~*-]+\.(pth|pt|ckpt|safetensors|jpg|jpeg|png|mat|json|yaml|npz|txt)$")


def path_tokens(run: Run, text: str | None = None) -> list[str]:
    """The words of a run (or of ``text``, a variant of it) that name files, folders or Hub repos
    (``NAME=`` and ``init:`` prefixes dropped)."""
    text = run.text if text is None else text
    if run.kind == "shell":
        candidates = [word for word in words(text) if not word.startswith("-")]
    else:
        candidates = [node.value for node in ast.walk(ast.parse(text)) if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    tokens = []
    for word in candidates:
        name, separator, value = word.partition("=")
        if separator and re.fullmatch(r"[A-Za-z_][\w-]*", name):
            word = value.removeprefix("init:")
        if PATH_LIKE.match(word) and not re.fullmatch(r"[\d.]+", word):
            tokens.append(word)
    return tokens


def readme_runs(text: str) -> list[Run]:
    runs, block_commands = [], []
    for block in code_blocks(text):
        if block.language == "bash":
            for command in shell_commands(block.code):
                runs.append(Run("shell", command, block.line, f"the bash block of line {block.line} ({block.heading})"))
                block_commands.append(command)
        elif block.language == "python":
            runs.append(Run("python", block.code, block.line, f"the python block of line {block.line} ({block.heading})"))
        elif block.language not in NOT_CODE:
            raise AssertionError(f"README line {block.line}: a {block.language or 'plain'!r} block: run it here, or list it in NOT_CODE")
    for command in inline_commands(text):
        if not any(command in block_command for block_command in block_commands):
            line = text[: text.index(f"`{command}`")].count("\n") + 1
            runs.append(Run("shell", command, line, f"the prose of line {line}"))
    return sorted(runs, key=lambda run: run.line)


# =============================================================================================
# The test
# =============================================================================================
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    work.mkdir()
    # A clone has the checkout beside its commands: training/ and the packaged assets under snd_hf/.
    for name in ("training", "snd_hf"):
        (work / name).symlink_to(REPO_ROOT / name)
    hub = HubEmulator(root / "hub").start()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING", "TRANSFORMERS_OFFLINE", "SND_", "ACCELERATE_"))}
    env.update(
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        HF_ENDPOINT=hub.url,
        HF_HOME=str(root / "hf_home"),
        HF_TOKEN=hub.token,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        CUDA_VISIBLE_DEVICES="",
    )
    try:
        yield work, hub, env
    finally:
        hub.stop()


def _external_path(work: Path, text: str) -> Path:
    return work / "external" / text.lstrip("/") if text.startswith("/") else work / text


def _apply_external(text: str, work: Path) -> str:
    for original in sorted(EXTERNAL, key=len, reverse=True):
        if original.startswith("/"):
            text = text.replace(original, str(_external_path(work, original)))
    return text


@pytest.mark.slow
def test_readme_commands_and_blocks_run_as_written(workspace):
    work, hub, env = workspace
    runs = readme_runs(readme_text())
    keys = {run.key for run in runs}
    stale = [key for table in (SHORTER, NOT_RUN) for key in table if key not in keys]
    stale += [key for table in (EXTERNAL, VARIANTS) for key in table if key not in readme_text()]
    assert not stale, f"tables in {__file__} name things README no longer has: {stale}"

    makers, made, failures, timings = StandIns(hub), set(), [], []
    scripts = work.parent / "scripts"
    scripts.mkdir(exist_ok=True)
    for run in runs:
        if run.key in NOT_RUN:
            globals()[NOT_RUN[run.key][1]](run.key)
            continue
        assert not (run.kind == "shell" and is_install(run.text)), f"{run.source}: install command {run.key!r} is not in NOT_RUN"
        variants = run.variants()
        # Every path must exist by now (the checkout's training/, earlier commands' outputs), be
        # written by this command, or be an external input with a stand-in.
        for token in (token for text in variants for token in path_tokens(run, text)):
            if token in EXTERNAL:
                if token not in made:
                    getattr(makers, EXTERNAL[token][1])(_external_path(work, token))
                    made.add(token)
            elif not (work / token).exists() and token.rstrip("/") not in {path.rstrip("/") for path in WRITTEN}:
                pytest.fail(
                    f"{run.source} reads {token!r}, which no earlier README command makes: if it is external data or "
                    f"weights, add a stand-in to EXTERNAL in {__file__}; if the command writes it, add it to WRITTEN"
                )
        for text in variants:
            start = time.perf_counter()
            if run.kind == "shell":
                extra = SHORTER.get(run.key, ("", ""))[0]
                command = _apply_external(run.key, work) + (f" {extra}" if extra else "")
                result = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=900)
            else:
                script = scripts / f"block_line{run.line}_{len(timings)}.py"
                script.write_text(_apply_external(text, work))
                command = f"python {script.name}"
                result = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=900)
            timings.append(f"{time.perf_counter() - start:6.1f} s  {run.source}: {command[:110]}")
            if result.returncode != 0:
                failures.append(f"{run.source}: {command}\nexit {result.returncode}\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}")
    print("\n".join(timings))
    assert not failures, f"{len(failures)} README command(s) failed:\n\n" + "\n\n".join(failures)
    missing = sorted(path for path in WRITTEN if not (work / path).exists())
    assert not missing, f"README commands should have written {missing}"
    # Run in a checkout, every README command writes only what .gitignore covers (inputs and the checkout aside).
    inputs = {"training", "snd_hf", "external", *(key.removeprefix("./").split("/")[0] for key in EXTERNAL)}
    outputs = [entry.name + "/" * entry.is_dir() for entry in work.iterdir() if entry.name not in inputs]
    assert not _not_ignored(outputs), f"README commands write {_not_ignored(outputs)} into the checkout: add them to .gitignore"
    assert "model.safetensors" in hub.files("you/snd-tiny"), "--push_to_hub pushed no weights to the Hub"


def _not_ignored(paths: list[str]) -> list[str]:
    """The paths (relative to the checkout; folders with a trailing /) that its .gitignore does not cover."""
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: no .gitignore to check")
    ignored = [subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "--no-index", "-q", path]).returncode == 0 for path in paths]
    return [path for path, covered in zip(paths, ignored) if not covered]


def test_gitignore_covers_what_readme_commands_write():
    # WRITTEN (a folder or a file), the convert's sidecar and the default output folders of snd demo and train.py.
    written = [*WRITTEN, "snd-small.pth.json", "snd-demo/", "outputs/snd-synthetic-tiny/"]
    assert not [path for path in written if _not_ignored([path]) and _not_ignored([path.rstrip("/") + "/a_file"])]


def test_an_unknown_external_path_is_named():
    run = Run("shell", "snd extract /data/new_set/*.jpg --model ./snd-vits14 --out features/", 1, "x")
    assert path_tokens(run) == ["/data/new_set/*.jpg", "./snd-vits14", "features/"]
    run = Run("python", 'm = SnDModel.from_pretrained("org/model")\nx = load("weights.pth", size="small")\n', 1, "x")
    assert path_tokens(run) == ["org/model", "weights.pth"]
    assert path_tokens(Run("shell", "snd eval all --model a=init:outputs/run --data nyuv2=/data/nyu --steps 1.5", 1, "x")) == ["outputs/run", "/data/nyu"]


def test_every_block_is_run_or_explained():
    runs = readme_runs(readme_text())
    assert {run.kind for run in runs} == {"shell", "python"}
    for block in code_blocks(readme_text()):
        assert block.language in ("bash", "python", *NOT_CODE), f"README line {block.line}: unknown block language {block.language!r}"
    with pytest.raises(AssertionError, match="a 'sh' block"):
        readme_runs("# Title\n\n```sh\nls\n```\n")
    # An inline command that no block contains is run on its own; one that a block holds is not repeated.
    prose = readme_runs("Run `snd --version` or `snd demo`.\n\n```bash\nsnd demo --out x\n```\n")
    assert [(run.kind, run.text) for run in prose] == [("shell", "snd --version"), ("shell", "snd demo --out x")]
