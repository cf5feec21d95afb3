"""Keep the terminal for vistune's own output: libraries' progress bars and chatter below errors are hidden."""

from __future__ import annotations

import os
import sys


def silence_library_output() -> None:
    """Hide transformers' and huggingface_hub's progress bars ("Loading weights", "Writing model shards") and
    their log messages below errors. A user's own TRANSFORMERS_VERBOSITY / HF_HUB_DISABLE_PROGRESS_BARS wins.

    Cheap to call before transformers is imported (it sets the environment defaults that transformers reads at
    import, so `vistune --help` does not pay for the import); once it is imported, its logging API is used too.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" not in sys.modules:
        return
    from transformers.utils import logging as hf_logging

    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] not in ("0", "false", "False", ""):
        hf_logging.disable_progress_bar()
    verbosity = os.environ["TRANSFORMERS_VERBOSITY"]
    if verbosity in ("debug", "info", "warning", "error", "critical"):
        hf_logging.set_verbosity(getattr(hf_logging, verbosity.upper()))
