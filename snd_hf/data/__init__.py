"""Multi-view scene data: ScanNet++ layout, generated scenes, Hugging Face datasets.

- :mod:`snd_hf.data.synthetic`: procedural rooms ray cast to RGB, depth, normals, instances and
  semantics (``snd synth``; ``generate_scenes`` / ``ensure_synthetic_scenes``).
- :mod:`snd_hf.data.scannetpp`: the ScanNet++ (SnD/FiT3D) folder reader.
- :mod:`snd_hf.data.hf`: the same scenes as ``datasets`` (schema, converter, streaming).
- :mod:`snd_hf.data.scenes`: ``SceneDataset`` (context/target view sampling) and ``collate_scenes``.
- :mod:`snd_hf.data.correspondence`: ground-truth pixel correspondences with visibility.
- :mod:`snd_hf.data.frames`: decoding of one frame's files, shared by the readers.
- :mod:`snd_hf.data.sampling`: which frames one sample takes (``SamplingOptions``), shared by every reader.
- :mod:`snd_hf.data.memory`: ``InMemoryViews``, decoded views kept in memory for small datasets.
"""
