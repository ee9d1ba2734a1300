"""What `import snd_hf` offers: the transformers set plus what the README calls; conversion helpers
stay in `snd_hf.loading`, every name there resolves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import snd_hf
import snd_hf.loading

README = Path(__file__).resolve().parents[1] / "README.md"


def test_top_level_names_are_the_transformers_set_and_load_backbone_weights():
    assert snd_hf.__all__ == sorted(
        ["SnDBackbone", "SnDConfig", "SnDImageProcessor", "SnDModel", "SnDModelOutput", "SnDPreTrainedModel", "load_backbone_weights"]
    )
    assert snd_hf.SnDModel.config_class is snd_hf.SnDConfig
    assert snd_hf.SnDModelOutput.__module__ == "snd_hf.modeling_snd"


def test_every_name_the_readme_imports_from_snd_hf_is_public():
    imported = {
        name.strip()
        for names in re.findall(r"^from snd_hf import (.+)$", README.read_text(), flags=re.MULTILINE)
        for name in names.split(",")
    }
    assert imported and imported <= set(snd_hf.__all__), imported - set(snd_hf.__all__)


def test_conversion_helpers_live_in_snd_hf_loading():
    for name in snd_hf.loading.__all__:
        assert getattr(snd_hf.loading, name) is not None, name
    assert not hasattr(snd_hf, "convert_original_state_dict")
    assert snd_hf.loading.CheckpointError.__module__ == "snd_hf.loading.errors"


def test_import_snd_hf_loads_no_torch():
    code = "import sys, snd_hf; print(sorted(snd_hf.__all__) == snd_hf.__all__, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False"]
