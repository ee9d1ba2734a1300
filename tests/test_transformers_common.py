"""transformers' own common test suites (ModelTesterMixin, BackboneTesterMixin, ConfigTester) on SnD.

The suites ship in the source distribution of the installed transformers version, not in its wheel.
This module fetches that sdist once with pip into a cache folder (``SND_TRANSFORMERS_TESTS_CACHE``,
default ``~/.cache/snd-hf/transformers-tests``), imports its ``tests/`` folder as a package and runs
the mixins against ``SnDModel``/``SnDBackbone`` with a tiny tester, as transformers' Dinov2 tests do.
Nothing from the sdist is copied into this repository. Without the sdist (offline, no registry) the
module is skipped with the reason.

Three helper modules the mixins import are not in the sdist; they are stood in for here:
``exporters/test_export.py`` (the export mixin: its tests do not run; ``tests/test_modeling_snd_export.py``
covers torch.export and ONNX), ``generation/test_utils.py`` (SnD does not generate) and
``utils/test_configuration_utils.py`` (the general ``PreTrainedConfig`` arguments, each set to a value
other than its default, below).

Tests that do not apply to SnD are skipped in the test classes below, each with its reason.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import unittest
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers.models.auto import modeling_auto

from snd_hf import SnDBackbone, SnDConfig, SnDModel

# Hundreds of mixin tests and an sdist fetch: the slow tier (python -m pytest -q -m slow).
pytestmark = pytest.mark.slow

pytest.importorskip("parameterized", reason="transformers' common tests need `parameterized` (the test extra)")

VERSION = transformers.__version__
PACKAGE = "transformers_common_tests"
CACHE = Path(os.environ.get("SND_TRANSFORMERS_TESTS_CACHE", Path.home() / ".cache" / "snd-hf" / "transformers-tests"))

STAND_INS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": (
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "is_encoder_decoder": True,\n'
        '    "architectures": ["SnDModel"],\n'
        '    "id2label": {0: "wall", 1: "floor"},\n'
        '    "label2id": {"wall": 0, "floor": 1},\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
}


def _fetch_common_tests() -> Path:
    """The folder holding the importable ``PACKAGE`` for this transformers version (fetched once).

    Raises:
        RuntimeError: pip could not download the sdist, or it has no common test files.
    """
    root = CACHE / VERSION
    if (root / PACKAGE / "test_modeling_common.py").is_file():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        download += ["--dest", scratch, f"transformers=={VERSION}"]
        # Without build isolation pip reads the sdist's metadata in seconds (needs setuptools here).
        attempts = [download + ["--no-build-isolation"], download]
        errors = []
        for command in attempts:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if result.returncode == 0:
                break
            errors.append(result.stderr.strip().splitlines()[-1:] or ["(no output)"])
        else:
            raise RuntimeError(f"pip download of transformers=={VERSION} failed: {errors[-1][0]}")
        (archive,) = Path(scratch).glob("transformers-*.tar.gz")
        staging = Path(scratch) / "staging"
        package = staging / PACKAGE
        package.mkdir(parents=True)
        with tarfile.open(archive) as sdist:
            members = [m for m in sdist.getmembers() if m.isfile() and m.name.count("/") == 2 and m.name.split("/")[1] == "tests"]
            for member in members:
                (package / Path(member.name).name).write_bytes(sdist.extractfile(member).read())
        if not (package / "test_modeling_common.py").is_file():
            raise RuntimeError(f"the transformers=={VERSION} sdist has no tests/test_modeling_common.py")
        (package / "__init__.py").write_text("")
        for path, text in STAND_INS.items():
            (package / path).parent.mkdir(exist_ok=True)
            (package / path).parent.joinpath("__init__.py").touch()
            (package / path).write_text(text)
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, root)  # complete or absent: never half-extracted
        except OSError:
            if not (root / PACKAGE / "test_modeling_common.py").is_file():
                raise
    return root


try:
    sys.path.insert(0, str(_fetch_common_tests()))
    with warnings.catch_warnings():
        # transformers registers its custom marks (flash_attn_test, ...) in its own conftest
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        common = importlib.import_module(f"{PACKAGE}.test_modeling_common")
        backbone_common = importlib.import_module(f"{PACKAGE}.test_backbone_common")
        configuration_common = importlib.import_module(f"{PACKAGE}.test_configuration_common")
except (OSError, RuntimeError, subprocess.SubprocessError, ValueError) as error:
    pytest.skip(f"transformers {VERSION}'s common tests are not available: {error}", allow_module_level=True)


@pytest.fixture(autouse=True, scope="module")
def _snd_in_transformers_tables():
    """List SnD in transformers' built-in tables of base models and backbones for these tests.

    The suites recognise base models by those static tables (e.g. ``test_training`` skips models
    without a loss head); ``snd_hf`` registers its classes with the Auto classes, which the tables do
    not see.
    """
    tables = [(modeling_auto.MODEL_MAPPING_NAMES, "SnDModel"), (modeling_auto.MODEL_FOR_BACKBONE_MAPPING_NAMES, "SnDBackbone")]
    for table, name in tables:
        table[SnDConfig.model_type] = name
    yield
    for table, _ in tables:
        table.pop(SnDConfig.model_type, None)


class SnDModelTester:
    """A tiny SnD for the common suites: 4x4 patches of 2 px, 32 channels, 2 layers (like Dinov2's tester)."""

    def __init__(self, parent, batch_size: int = 3, image_size: int = 8, patch_size: int = 2) -> None:
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = 3
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.is_training = True
        self.num_patches = (image_size // patch_size) ** 2
        self.seq_length = self.num_patches + 1  # CLS first
        self.mask_length = self.num_patches  # bool_masked_pos covers the patches only
        self.num_masks = 3

    def get_config(self) -> SnDConfig:
        return SnDConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            layerscale_value=0.5,
            out_features=["stage1", "stage2"],
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[SnDConfig, dict[str, torch.Tensor]]:
        pixel_values = common.floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), {"pixel_values": pixel_values}


class SnDModelTest(common.ModelTesterMixin, unittest.TestCase):
    """ModelTesterMixin on SnDModel and SnDBackbone, plus ConfigTester on SnDConfig."""

    all_model_classes = (SnDModel, SnDBackbone)
    test_resize_embeddings = False  # no token embeddings: images in, patch projection
    has_attentions = True
    # The suite skips this init check for models whose file carries no 2023+ copyright line; SnD opts in.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self) -> None:
        self.model_tester = SnDModelTester(self)
        # hidden_size 48: SnDConfig refuses sizes not divisible by the (12 default) heads, e.g. the 37
        # transformers' Dinov2 tests use, because the attention would reshape them wrongly.
        self.config_tester = configuration_common.ConfigTester(
            self, config_class=SnDConfig, has_text_modality=False, hidden_size=48
        )

    def test_config(self) -> None:
        self.config_tester.run_common_tests()

    def test_model_get_set_embeddings(self) -> None:
        """The vision form of the check (as transformers' ViT/Dinov2 tests): the input embedding is the
        patch projection, there are no output embeddings."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIs(model.get_input_embeddings(), model.embeddings.patch_embeddings)
            self.assertIsInstance(model.get_input_embeddings().projection, torch.nn.Conv2d)
            self.assertIsNone(model.get_output_embeddings())

    @unittest.skip(reason="vision model: pixel_values in, no inputs_embeds")
    def test_inputs_embeds(self) -> None:
        pass

    @unittest.skip(reason="vision model: pixel_values in, no inputs_embeds")
    def test_inputs_embeds_matches_input_ids(self) -> None:
        pass

    @unittest.skip(
        reason="SnD loads strictly: a native folder whose weights miss keys is refused with a CheckpointError naming "
        "them (docs/reliability.md), where this test expects transformers' lenient load with a missing-keys report"
    )
    def test_model_weights_reload_no_missing_tied_weights(self) -> None:
        pass


class SnDBackboneTest(backbone_common.BackboneTesterMixin, unittest.TestCase):
    """BackboneTesterMixin on SnDBackbone."""

    all_model_classes = (SnDBackbone,)
    config_class = SnDConfig
    has_attentions = False  # the backbone suite's attention checks expect no attentions by default

    def setUp(self) -> None:
        self.model_tester = SnDModelTester(self)
