"""Multi-view scene data: ScanNet++ layout, generated scenes, Hugging Face datasets."""
