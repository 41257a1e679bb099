"""videollm as an lmms-eval model: `--model videollm` inside lmms-eval's own evaluator and tasks.

lmms-eval (>= 0.7) finds out-of-tree models through the `lmms_eval.models` entry-point group; videollm's
package metadata declares `videollm = "videollm.eval.lmms:manifest"`, so an installed videollm is known to
`lmms-eval --model videollm`. `python -m videollm.eval.lmms ...` registers the model itself (for a source
tree without installed metadata) and makes torchvision importable on CPU-only installs before lmms-eval
imports it, then runs lmms-eval's CLI unchanged. This module imports nothing heavy: lmms-eval loads every
entry point each time it starts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmms_eval.models.registry_v2 import ModelManifest

MODEL_ID = "videollm"
CLASS_PATH = "videollm.eval.lmms.model.VideoLLM"
#: the lmms-eval release the adapter and its test were written against (the `lmms-eval` extra pins it)
TESTED_LMMS_EVAL = "0.7.3"


def manifest() -> ModelManifest:
    """The entry point's payload: lmms-eval imports the model class only when `--model videollm` is asked for."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


def register() -> None:
    """Add `videollm` to lmms-eval's model registry in this process (idempotent)."""
    from lmms_eval import models

    models.MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
    models.AVAILABLE_MODELS[MODEL_ID] = CLASS_PATH.rsplit(".", 1)[-1]
