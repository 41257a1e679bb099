"""VideoMME (lmms-eval `videomme` / `videomme_w_subtitle`), read from the Hugging Face release layout.

    DATA_DIR/videomme/test-00000-of-00001.parquet   columns: video_id, duration, domain, sub_category, url,
                                                    videoID, question_id, task_type, question, options, answer
    DATA_DIR/data/<videoID>.mp4                     (.MP4 / .mkv accepted, as lmms-eval does)
    DATA_DIR/subtitle/<videoID>.srt                 optional; used by videomme_w_subtitle
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .base import (
    RuleSet,
    Sample,
    Task,
    as_list,
    find_annotation,
    letter_of,
    read_table,
    register_task,
    require_columns,
    resolve_video,
)

if TYPE_CHECKING:
    from videollm.video import Video

logger = logging.getLogger(__name__)

OPTION_PROMPT = ("Select the best answer to the following multiple-choice question based on the video and the "
                 "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."  # the `default` profile
SUBTITLE_HEADER = "This video's subtitles are listed below: \n"
SUBTITLE_POST = "The best answer is:"  # hard-coded upstream for the subtitle variant
SUBTITLE_FRAMES = 32  # lmms-eval's `frame_num`: subtitles shown are those under 32 evenly spaced frames
_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')

LAYOUT = ("DATA_DIR/videomme/test-00000-of-00001.parquet (the lmms-lab/Video-MME files), videos in DATA_DIR/data/, "
          "subtitles (optional) in DATA_DIR/subtitle/")


def videomme_prompt(question: str, options: list[str]) -> str:
    return OPTION_PROMPT + "\n" + question + "\n" + "\n".join(options) + "\n" + POST_PROMPT


def subtitle_prompt(question: str, options: list[str], subtitles: str) -> str:
    return (SUBTITLE_HEADER + subtitles + "\n" + OPTION_PROMPT + "\n" + question + "\n" + "\n".join(options)
            + "\n" + SUBTITLE_POST)


def _srt_seconds(stamp: str) -> float:
    h, m, rest = stamp.strip().split(":")
    s, ms = rest.split(",")
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def load_srt(path: Path) -> dict[tuple[float, float], str]:
    """Blocks keyed by (start, end) seconds, as lmms-eval's `load_subtitles` (duplicates collapse)."""
    subs: dict[tuple[float, float], str] = {}
    for block in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        lines = block.split("\n")
        if not block.strip() or len(lines) < 3:
            continue
        try:
            start, end = (_srt_seconds(t) for t in lines[1].split(" --> "))
        except ValueError:
            continue
        subs[(start, end)] = " ".join(lines[2:])
    return subs


def subtitles_for_frames(path: Path, fps: float, total_frames: int, frame_num: int = SUBTITLE_FRAMES) -> str:
    """The subtitle lines under `frame_num` evenly spaced frames, as `videomme_doc_to_text_subtitle` builds them."""
    spans = [(int(s * fps), int(e * fps), text) for (s, e), text in load_srt(path).items()]
    n = total_frames if frame_num == -1 else frame_num
    picked: list[int] = []
    for f in np.linspace(0, total_frames - 1, n, dtype=int).tolist():
        picked += [i for i, (s, e, _) in enumerate(spans) if s <= f < e]
    lines = []
    for i in list(set(picked)):  # upstream's (set-ordered) de-duplication
        found = _FONT.findall(spans[i][2])
        if found:
            lines.append(found[0])
    return "\n".join(lines)


@register_task
class VideoMME(Task):
    name = "videomme"
    rules: ClassVar[dict[str, RuleSet]] = {
        "v0.7.2": RuleSet("mcq-v2026", "accuracy"),
        "v0.7.1": RuleSet("regex-v2024", "accuracy"),
        "v0.3.1": RuleSet("regex-v2024", "accuracy"),
    }
    breakdowns: ClassVar[dict[str, str]] = {"duration": "duration", "domain": "domain", "task_type": "task type",
                                            "sub_category": "sub-category"}
    subtitles = False

    def load(self, data_dir: str | Path) -> list[Sample]:
        root = Path(data_dir)
        ann = find_annotation(root, ["videomme/test-*.parquet", "test-*.parquet", "*.parquet", "**/*.parquet",
                                     "videomme.json", "videomme.jsonl"], "VideoMME", LAYOUT)
        rows = read_table(ann)
        require_columns(rows, ["videoID", "question_id", "question", "options", "answer", "duration"], ann)
        bases = [root / "data", root / "videos", root]
        sub_dir = root / "subtitle"
        if self.subtitles and not sub_dir.is_dir():
            logger.warning("%s: no subtitle folder; every question gets \"No subtitles available\"", sub_dir)
        out = []
        for r in rows:
            options = [str(o) for o in as_list(r["options"])]  # already "A. ..." upstream
            fields: dict[str, Any] = {"duration": r.get("duration"), "domain": r.get("domain"),
                                      "task_type": r.get("task_type"), "sub_category": r.get("sub_category")}
            path = resolve_video(bases, str(r["videoID"]))
            if self.subtitles:
                fields["subtitle_path"] = str(sub_dir / f"{r['videoID']}.srt")
            question = str(r["question"])
            out.append(Sample(question_id=str(r["question_id"]), task=self.name, video=str(r["videoID"]),
                              video_path=str(path), question=question, options=options,
                              answer=letter_of(r["answer"], options), prompt=videomme_prompt(question, options),
                              fields=fields))
        return out

    def prompt_for(self, sample: Sample, video: Video) -> str:
        """The subtitle variant needs the video's fps and frame count; the plain one is fixed at load."""
        if not self.subtitles:
            return sample.prompt
        srt = Path(sample.fields["subtitle_path"])
        if srt.is_file():
            text = subtitles_for_frames(srt, float(video.info.fps), int(video.info.num_frames))
        else:
            text = "No subtitles available"
        return subtitle_prompt(sample.question, sample.options, text)


@register_task
class VideoMMESubtitles(VideoMME):
    name = "videomme_w_subtitle"
    subtitles = True
