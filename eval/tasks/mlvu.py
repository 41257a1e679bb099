"""MLVU dev, multiple choice (lmms-eval `mlvu_dev`), from the Hugging Face parquet or the upstream JSON files.

    DATA_DIR/mlvu/test-00000-of-00001.parquet   (sy1998/MLVU_dev) columns: video_name, duration, question,
                                                candidates, answer, task_type, question_id
    DATA_DIR/<video_name>                       videos as the zips extract (also DATA_DIR/video/<video_name>)
or the upstream release (github.com/JUNJIE99/MLVU):
    DATA_DIR/json/{1_plotQA,2_needle,3_ego,4_count,5_order,6_anomaly_reco,7_topic_reasoning}.json
    DATA_DIR/video/<same stem>/<video>

lmms-eval's prompt uses only `question`, so in its parquet the question text already lists the options as
"(A) ..." lines. Where a question comes without them (the upstream JSON), they are added in MLVU's own
template ("Question: q\\nOptions:\\n(A) c1\\n..."), which is what that parquet holds.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from .base import (
    DatasetError,
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

POST_PROMPT = "\nOnly give the best option.\nBest option: ("  # lmms-eval `default` profile since 2025-04-17
TASK_TYPES = ("anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning")
_UPSTREAM_TYPE = {"findNeedle": "needle", "needleQA": "needle"}
_HAS_OPTIONS = re.compile(r"^\(A\)", re.MULTILINE)

LAYOUT = ("DATA_DIR/mlvu/test-00000-of-00001.parquet (the sy1998/MLVU_dev files) with the videos under DATA_DIR, "
          "or the upstream DATA_DIR/json/*.json with videos in DATA_DIR/video/<json stem>/")


def mlvu_question(question: str, candidates: list[str]) -> str:
    if not candidates or _HAS_OPTIONS.search(question):
        return question
    body = f"Question: {question}\nOptions:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(candidates))
    return body.rstrip()


def mlvu_prompt(question: str) -> str:
    return question + POST_PROMPT


@register_task
class MLVU(Task):
    name = "mlvu"
    rules: ClassVar[dict[str, RuleSet]] = {
        "v0.7.2": RuleSet("mcq-v2026", "m-avg"),
        "v0.7.1": RuleSet("paren-v2024", "m-avg"),
        "v0.3.1": RuleSet("regex-v2024", "micro"),
    }
    breakdowns: ClassVar[dict[str, str]] = {"task_type": "task"}

    def load(self, data_dir: str | Path) -> list[Sample]:
        root = Path(data_dir)
        try:
            ann = find_annotation(root, ["mlvu/test-*.parquet", "test-*.parquet", "*.parquet", "**/*.parquet"],
                                  "MLVU", LAYOUT)
        except DatasetError:
            if not (root / "json").is_dir():
                raise
            return self._load_upstream(root)
        rows = read_table(ann)
        require_columns(rows, ["video_name", "question", "answer", "task_type"], ann)
        bases = [root, root / "video", root / "videos"]
        out = []
        for i, r in enumerate(rows):
            cands = [str(c) for c in as_list(r.get("candidates"))]
            q = mlvu_question(str(r["question"]), cands)
            qid = r.get("question_id")
            out.append(self._sample(f"{i}" if qid is None or str(qid) == "" else str(qid), str(r["video_name"]),
                                    resolve_video(bases, str(r["video_name"])), q, cands,
                                    letter_of(r["answer"], cands), str(r["task_type"]), r.get("duration")))
        return out

    def _load_upstream(self, root: Path) -> list[Sample]:
        out = []
        for path in sorted((root / "json").glob("*.json")):
            for i, r in enumerate(read_table(path)):
                kind = _UPSTREAM_TYPE.get(r.get("question_type", ""), r.get("question_type", ""))
                if kind not in TASK_TYPES:  # the open-ended tasks (sub_scene, summary) are not in the MC set
                    continue
                cands = [str(c) for c in r["candidates"]]
                out.append(self._sample(f"{path.stem}_{i}", str(r["video"]),
                                        resolve_video([root / "video" / path.stem, root / "video"], str(r["video"])),
                                        mlvu_question(str(r["question"]), cands), cands,
                                        letter_of(r["answer"], cands), kind, r.get("duration")))
        if not out:
            raise DatasetError(f"{root / 'json'}: no multiple-choice questions found. Expected layout: {LAYOUT}")
        return out

    def _sample(self, qid: str, video: str, path: Path, question: str, cands: list[str], answer: str, kind: str,
                duration: object) -> Sample:
        options = [f"{chr(65 + i)}. {c}" for i, c in enumerate(cands)]
        return Sample(question_id=qid, task=self.name, video=video, video_path=str(path), question=question,
                      options=options, answer=answer, prompt=mlvu_prompt(question),
                      fields={"task_type": kind, "duration": duration})
