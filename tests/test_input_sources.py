"""Every video input form the Python API accepts (`videollm.video.sources`), and a `VideoLLMError` with a clear
message for everything else: frames in memory with `fps=`/`timestamps=`, bytes, file objects."""
from __future__ import annotations

import glob
import io
import tempfile

import numpy as np
import pytest
import torch

from videollm.errors import InvalidRequestError, NotAVideoError, UnknownNameError, VideoLLMError, VideoNotFoundError
from videollm.runtime.generation import GenerationConfig
from videollm.synthetic import frame_with_index, read_index
from videollm.video import SamplingConfig
from videollm.video.sources import open_source

GEN = GenerationConfig(max_new_tokens=2)


def coded(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.stack([frame_with_index(i, h, w) for i in range(n)])


def codes_of(video) -> list[int]:
    return [read_index(f.numpy()) for f in video.read().frames]


@pytest.mark.parametrize("form", ["numpy", "torch", "torch-tchw", "pil", "list-of-arrays"])
def test_frames_in_memory_are_sampled_like_a_file(form):
    from PIL import Image

    frames = coded(40)
    given = {"numpy": frames, "torch": torch.from_numpy(frames),
             "torch-tchw": torch.from_numpy(frames).permute(0, 3, 1, 2),
             "pil": [Image.fromarray(f) for f in frames], "list-of-arrays": list(frames)}[form]
    video = open_source(given, SamplingConfig(num_frames=5), fps=10)
    assert video.indices.tolist() == [0, 10, 20, 29, 39]  # the same plan as a 40-frame file at 10 fps
    assert codes_of(video) == [0, 10, 20, 29, 39]
    assert np.allclose(video.timestamps.numpy(), [0.0, 1.0, 2.0, 2.9, 3.9])


def test_timestamps_time_the_frames_and_drive_fps_sampling():
    frames = coded(6)
    times = [0.0, 0.5, 1.0, 4.0, 4.5, 9.0]  # variable rate: a gap between 1 s and 4 s
    video = open_source(frames, SamplingConfig(num_frames=None, fps=1.0), timestamps=times)
    assert np.allclose(video.timestamps.numpy(), [times[i] for i in video.indices])
    # one instant a second takes the frame on screen: 0 s → 0, 1-3 s → 2, 4 s → 3, 5-8 s → 4, 9 s → 5
    assert video.indices.tolist() == [0, 2, 3, 4, 5]
    assert codes_of(video) == [0, 2, 3, 4, 5]


@pytest.mark.parametrize("bad,match", [
    ({"timestamps": [0, 1]}, "one time per frame"),
    ({"timestamps": [0, 2, 1, 3]}, "non-decreasing"),
    ({"timestamps": [0, 1, float("nan"), 3]}, "finite"),
    ({"fps": 0}, "fps must be a positive number"),
    ({"fps": 2, "timestamps": [0, 1, 2, 3]}, "not both"),
])
def test_bad_times_are_refused(bad, match):
    with pytest.raises(InvalidRequestError, match=match):
        open_source(coded(4), SamplingConfig(), **bad)


def test_pipeline_answers_from_frames_bytes_and_file_objects(tiny_pipeline, short_video):
    data = short_video.read_bytes()
    answers = {
        "numpy": tiny_pipeline(coded(12), "what?", fps=4, generation=GEN),
        "bytes": tiny_pipeline(data, "what?", generation=GEN),
        "bytesio": tiny_pipeline(io.BytesIO(data), "what?", generation=GEN),
    }
    with open(short_video, "rb") as fh:
        answers["file"] = tiny_pipeline(fh, "what?", generation=GEN)
    for name, ans in answers.items():
        assert ans.sampled_frames == 8, name
    assert answers["numpy"].kept_timestamps == sorted(answers["numpy"].kept_timestamps)
    assert answers["numpy"].kept_timestamps[-1] == pytest.approx(11 / 4)
    for name in ("bytes", "bytesio", "file"):  # a file's bytes are read like the file
        assert answers[name].kept_timestamps == answers["file"].kept_timestamps


def test_bytes_leave_no_temporary_file(short_video):
    before = set(glob.glob(f"{tempfile.gettempdir()}/videollm-*"))
    video = open_source(short_video.read_bytes(), SamplingConfig(num_frames=4))
    assert len(video.read()) == 4
    video.close()
    with pytest.raises(NotAVideoError, match="<bytes>"):  # the user's input is named, not a temporary path
        open_source(b"this is not a video at all" * 10, SamplingConfig())
    assert set(glob.glob(f"{tempfile.gettempdir()}/videollm-*")) == before


def test_ask_many_accepts_frames(tiny_pipeline):
    answers = tiny_pipeline.ask_many(coded(10), ["what?", "and?"], fps=2, generation=GEN)
    assert [a.sampled_frames for a in answers] == [8, 8]


@pytest.mark.parametrize("bad,err,match", [
    (None, InvalidRequestError, "cannot read a video from None"),
    (3, InvalidRequestError, "cannot read a video from int"),
    ("~nosuchuser_videollm/clip.mp4", VideoNotFoundError, "no such user"),
    (np.zeros((2, 0, 0, 3), np.uint8), InvalidRequestError, "0×0 pixels"),
    (np.zeros((0, 8, 8, 3), np.uint8), InvalidRequestError, "no frames"),
    (np.zeros((8, 8, 3), np.uint8), InvalidRequestError, "look like one image"),
    (np.zeros((2, 8, 8, 3), np.float32), InvalidRequestError, "uint8"),
    (np.zeros((2, 8, 8), np.uint8), InvalidRequestError, r"\(T, H, W, 3\)"),
    (io.StringIO("text"), InvalidRequestError, "text mode"),
    (b"", InvalidRequestError, "no bytes"),
    ([object()], InvalidRequestError, "cannot read a video from list"),
])
def test_anything_else_is_a_videollm_error(tiny_pipeline, bad, err, match):
    with pytest.raises(err, match=match):
        tiny_pipeline(bad, "what?", generation=GEN)


def test_zero_by_zero_pil_image_and_mixed_sizes():
    from PIL import Image

    with pytest.raises(InvalidRequestError, match="0×0"):
        open_source([Image.new("RGB", (0, 0))], SamplingConfig())
    with pytest.raises(InvalidRequestError, match="one size"):
        open_source([Image.new("RGB", (8, 8)), Image.new("RGB", (16, 8))], SamplingConfig())


def test_fps_with_a_path_is_refused(short_video):
    with pytest.raises(InvalidRequestError, match="frames in memory"):
        open_source(str(short_video), SamplingConfig(), fps=3)


def test_unknown_config_field_is_named():
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline

    with pytest.raises(UnknownNameError, match="'bugdet'"):
        PipelineConfig(bugdet=8)
    with pytest.raises(VideoLLMError, match="'bogus'"):
        VideoQAPipeline.from_pretrained("tiny-random", bogus=1)
    assert PipelineConfig(budget=8).replace(compressor="pool").budget == 8


def test_a_file_on_disk_is_opened_by_name_and_a_stream_is_copied(short_video, tmp_path):
    with open(short_video, "rb") as fh:
        video = open_source(fh, SamplingConfig(num_frames=4))
        assert video.source == str(short_video)  # nothing copied
        video.close()
        fh.seek(10)  # not at its start: its remaining bytes are what the user gives
        with pytest.raises(VideoLLMError):
            open_source(fh, SamplingConfig(num_frames=4))
    with open(short_video, "r", encoding="latin-1") as text:
        with pytest.raises(InvalidRequestError, match="text mode"):
            open_source(text, SamplingConfig())
    stream = io.BufferedReader(io.BytesIO(short_video.read_bytes()))
    video = open_source(stream, SamplingConfig(num_frames=4))
    spooled = video.source
    assert spooled != str(short_video) and len(video.read()) == 4
    video.close()
    assert not __import__("os").path.exists(spooled)


def test_a_stream_read_to_its_end_says_so(short_video):
    """A BytesIO the user already read (or wrote into and did not rewind) is not 'an empty video'."""
    data = short_video.read_bytes()
    written = io.BytesIO()
    written.write(data)  # left at its end
    with pytest.raises(InvalidRequestError, match=rf"nothing left to read at byte {len(data)}; call \.seek\(0\)"):
        open_source(written, SamplingConfig(num_frames=4))
    with pytest.raises(InvalidRequestError, match="no bytes"):
        open_source(io.BytesIO(), SamplingConfig())
    written.seek(0)
    video = open_source(written, SamplingConfig(num_frames=4))
    assert len(video.read()) == 4
    video.close()
