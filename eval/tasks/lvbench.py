"""LVBench (lmms-eval `lvbench`), from the lmms-eval parquet or the upstream THUDM metadata file.

    DATA_DIR/*.parquet              (lmms-eval/LVBench, split train) columns include question (options inline
                                    as "(A) ..."), answer (letter), video_path (relative to DATA_DIR), uid,
                                    question_type (list), time_reference; an `options` column is appended
                                    to the question when present, as lmms-eval does since 2026-04
or the upstream release (github.com/THUDM/LVBench):
    DATA_DIR/video_info.meta.jsonl  one line per video: key, type, qa: [{uid, question, answer, question_type,
                                    time_reference}], video_info; videos at DATA_DIR/videos/<key>.mp4
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

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

POST_PROMPT = "\nAnswer the question with the option letter"  # the YAML default (no period)
_OPTION_LINE = re.compile(r"^\(([A-Z])\)\s*(.*)$", re.MULTILINE)

LAYOUT = ("DATA_DIR/*.parquet (the lmms-eval/LVBench files, video_path relative to DATA_DIR) or "
          "DATA_DIR/video_info.meta.jsonl with videos in DATA_DIR/videos/<key>.mp4")


def lvbench_prompt(question: str, options: list[str] | None = None) -> str:
    if options:
        question = question + "\n" + "\n".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(options))
    return question + POST_PROMPT


@register_task
class LVBench(Task):
    name = "lvbench"
    rules: ClassVar[dict[str, RuleSet]] = {
        "v0.7.2": RuleSet("mcq-v2026", "accuracy"),
        "v0.7.1": RuleSet("regex-v2024", "accuracy"),
        "v0.3.1": RuleSet("regex-v2024", "accuracy"),
    }
    breakdowns: ClassVar[dict[str, str]] = {"question_type": "question category"}
    metric_scale = 1.0  # lmms-eval logs lvbench_score as a fraction; we report percent and say so

    def load(self, data_dir: str | Path) -> list[Sample]:
        root = Path(data_dir)
        ann = find_annotation(root, ["*.parquet", "data/*.parquet", "**/*.parquet", "video_info.meta.jsonl",
                                     "data/video_info.meta.jsonl"], "LVBench", LAYOUT)
        if ann.suffix == ".jsonl":
            rows = [{**qa, "key": v.get("key"), "video_type": v.get("type")}
                    for v in read_table(ann) for qa in v.get("qa", [])]
        else:
            rows = read_table(ann)
        require_columns(rows, ["question", "answer"], ann)
        out = []
        for i, r in enumerate(rows):
            out.append(self._sample(root, r, i))
        return out

    def _sample(self, root: Path, r: dict[str, Any], i: int) -> Sample:
        question = str(r["question"])
        extra = [str(o) for o in as_list(r.get("options"))]
        inline = [f"{m.group(1)}. {m.group(2).strip()}" for m in _OPTION_LINE.finditer(question)]
        options = [f"{chr(65 + k)}. {o}" for k, o in enumerate(extra)] if extra else inline
        if r.get("video_path"):
            video = str(r["video_path"])
            path = resolve_video([root, root / "videos", root / "video_chunks"], video)
        else:
            video = str(r.get("key") or r.get("video_id") or r.get("video"))
            path = resolve_video([root / "videos", root / "video", root / "all_videos", root], video)
        qid = r.get("uid", r.get("question_id"))
        return Sample(question_id=str(i if qid is None else qid), task=self.name, video=video, video_path=str(path),
                      question=question, options=options, answer=letter_of(r["answer"], extra),
                      prompt=lvbench_prompt(question, extra),
                      fields={"question_type": [str(t) for t in as_list(r.get("question_type"))],
                              "time_reference": r.get("time_reference"), "video_type": r.get("video_type")})
