"""vistune: visual instruction tuning (LLaVA) as a toolkit."""

__version__ = "0.1.0"


def load(path, dtype=None, device="cpu"):
    """Load a vistune checkpoint directory as a `VisionLanguageModel` (float32 unless `dtype` is given)."""
    import torch

    from vistune.model.checkpoint import load_checkpoint
    from vistune.utils.quiet import silence_library_output

    silence_library_output()
    return load_checkpoint(path, dtype=dtype or torch.float32, device=device)
