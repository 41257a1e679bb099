"""Shared fixtures: a tiny random backbone and generated videos (no hub, no downloads)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_feature_cache():
    """Each test starts with empty feature and prompt-prefix caches (session fixtures share backbones and
    videos)."""
    from videollm.feature_cache import default_cache
    from videollm.runtime.prefix_cache import default_prefix_cache

    default_cache().clear()
    default_prefix_cache().clear()
    yield
    default_cache().clear()
    default_prefix_cache().clear()


@pytest.fixture(scope="session")
def tiny_backbone():
    from videollm.backbones.tiny import build_tiny_random

    return build_tiny_random()


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def short_video(video_dir):
    """4 s, 25 fps, 96×128 H.264 with each frame's index drawn in it."""
    from videollm.synthetic import write_video

    return write_video(video_dir / "short.mp4", 100, fps=25, size=(96, 128))


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_backbone):
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline
    from videollm.video import SamplingConfig

    cfg = PipelineConfig(model="tiny-random", sampling=SamplingConfig(num_frames=8))
    return VideoQAPipeline(tiny_backbone, cfg)
