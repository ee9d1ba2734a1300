"""Frozen-feature probes: depth, surface normals, segmentation and correspondence.

Modules, one concept each: ``metrics`` (the scores), ``depth`` / ``normals`` / ``segmentation``
(heads and losses), ``probe`` (the shared training loop), ``correspondence`` (training-free
matching), ``features`` (loading compared models, extracting features once), ``datasets``
(readers of the standard layouts), ``synthetic`` (the generated built-in benchmark), ``tasks``
(one task on in-memory data), ``figures`` (pictures) and ``suite`` (``evaluate`` and ``snd eval``).
"""

from snd_hf.eval.suite import PRESETS, TASKS, evaluate

__all__ = ["PRESETS", "TASKS", "evaluate"]
