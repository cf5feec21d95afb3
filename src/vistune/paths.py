"""Where vistune keeps converted default weights, and how built-in part names resolve."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of vistune's cache: $VISTUNE_CACHE, else $XDG_CACHE_HOME/vistune, else ~/.cache/vistune."""
    if os.environ.get("VISTUNE_CACHE"):
        return Path(os.environ["VISTUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "vistune"


def package_dir(module: str, hint: str) -> Path:
    """Directory of an installed package found without importing it (some default-weight packages fail on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed; {hint}")
    return Path(list(spec.submodule_search_locations)[0])
