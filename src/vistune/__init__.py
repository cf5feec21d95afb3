"""vistune: visual instruction tuning (LLaVA) as a toolkit.

    model = vistune.load("runs/demo/stage2/final")
    model.chat(image, "What colour is the star?")
"""

from vistune.version import __version__

__all__ = ["__version__", "load"]


def load(path, dtype=None, device="cpu"):
    """Load a vistune checkpoint directory as an `Assistant` (a `VisionLanguageModel` with `chat` and
    `chat_stream`), float32 unless `dtype` is given."""
    from vistune.inference.assistant import load_assistant
    from vistune.utils.quiet import silence_library_output

    silence_library_output()
    return load_assistant(path, dtype=dtype, device=device)
