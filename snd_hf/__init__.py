"""snd-hf: Splat and Distill (SnD) 3D-aware DINOv2 features, Hugging Face style.

`import snd_hf` is light (no torch): the names below load on first use (PEP 562), so the `snd`
command answers `--help` at once. The package registers `SnDConfig` / `SnDModel` / `SnDBackbone` /
`SnDImageProcessor` with transformers' Auto classes (model type "snd") as soon as both it and
transformers are imported, in either order, so `AutoModel.from_pretrained(dir)`,
`AutoImageProcessor.from_pretrained(dir)` and `pipeline("image-feature-extraction", model=dir)` work
on an SnD checkpoint directory or Hub repo without `trust_remote_code`, and task models build an SnD
backbone from `backbone_config=SnDConfig(...)` (`AutoBackbone.from_config`).

For a backbone from a local folder use `SnDBackbone.from_pretrained(dir, out_indices=[...])`:
`AutoBackbone.from_pretrained` works with Hub repo ids only, because transformers (5.24) first asks
the Hub whether the argument is a repo and refuses a local path (HFValidationError) before reading
it; its own Dinov2 folders fail the same way.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING

from .lazy import lazy_attribute

__version__ = "0.1.0"

# Public name -> the submodule defining it, imported on first access. The transformers set (config,
# model, backbone, image processor, output) and `load_backbone_weights`, which puts SnD weights into a
# task model's backbone; checkpoint conversion lives in `snd_hf.loading`, the variants in
# `snd_hf.configuration_snd`.
_LAZY_NAMES = {
    "SnDConfig": "configuration_snd",
    "SnDImageProcessor": "image_processing_snd",
    "SnDBackbone": "modeling_snd",
    "SnDModel": "modeling_snd",
    "SnDModelOutput": "modeling_snd",
    "SnDPreTrainedModel": "modeling_snd",
    "load_backbone_weights": "modeling_snd",
}
_REGISTERING_MODULE = f"{__name__}.modeling_snd"  # importing it registers the Auto classes

if TYPE_CHECKING:
    from .configuration_snd import SnDConfig
    from .image_processing_snd import SnDImageProcessor
    from .modeling_snd import SnDBackbone, SnDModel, SnDModelOutput, SnDPreTrainedModel, load_backbone_weights


def __getattr__(name: str):
    value = lazy_attribute(__name__, _LAZY_NAMES, name)
    _register_unless_importing()  # e.g. SnDConfig alone: DPTConfig(backbone_config=...) needs AutoBackbone
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES})


def _register_unless_importing() -> None:
    """Import the registering module, unless a module of this package is half imported (it will)."""
    # importlib flags a module whose code is running with __spec__._initializing (the flag behind
    # its own "partially initialized module" errors); registering then could re-enter that module.
    if not any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name.startswith(f"{__name__}.")
    ):
        importlib.import_module(_REGISTERING_MODULE)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs transformers' own loader, then registers the SnD classes (the import of transformers
    is where torch loads anyway), so a script can `import snd_hf` before or after transformers."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)  # once, and the real finders answer below
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.loader
        self.loader.exec_module(module)
        _register_unless_importing()


if "transformers" in sys.modules:
    _register_unless_importing()
elif not any(isinstance(finder, _RegisterAfterTransformers) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformers())

__all__ = sorted(_LAZY_NAMES)
