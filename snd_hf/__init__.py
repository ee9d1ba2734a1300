"""snd-hf: Splat and Distill (SnD) 3D-aware DINOv2 features, Hugging Face style."""

__version__ = "0.1.0"
