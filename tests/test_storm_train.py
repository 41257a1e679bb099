"""`videollm train storm`: data checks, an end-to-end run on tiny-random that resumes and loads, and learning."""
import json

import pytest
import torch

from videollm.cli import main
from videollm.compressors.storm import StormCompressor, StormConfig
from videollm.compressors.storm_train import (StormTrainConfig, TrainExample, answer_loss, encode_pooled,
                                              read_llava_json, train_storm)
from videollm.errors import InvalidRequestError
from videollm.synthetic import FLASH_QUESTION, flash_order_set, write_video
from videollm.video import Video


@pytest.fixture(scope="module")
def llava_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("storm_data")
    vids = root / "videos"
    write_video(vids / "a.mp4", 8, fps=4, size=(48, 64))
    write_video(vids / "b.mp4", 8, fps=4, size=(48, 64))
    records = [{"video": "a.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat is shown?"},
                                                    {"from": "gpt", "value": "A square."}]},
               {"video": "b.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat moves?"},
                                                    {"from": "gpt", "value": "The square."}]}]
    data = root / "train.json"
    data.write_text(json.dumps(records))
    return root, data, vids


def test_llava_json_is_read_and_checked(llava_data, tmp_path):
    root, data, vids = llava_data
    ex = read_llava_json(data, vids, num_frames=4)
    assert [e.question for e in ex] == ["What is shown?", "What moves?"] and ex[0].answer == "A square."
    assert len(ex[0].load()) == 4
    bad = tmp_path / "bad.json"
    for content, match in [("[]", "non-empty"), ("{oops", "not a JSON"), ('[{"video": "a.mp4"}]', "conversations"),
                           ('[{"video": "zz.mp4", "conversations": [{"from": "human", "value": "q"}, '
                            '{"from": "gpt", "value": "a"}]}]', "video not found"),
                           ('[{"video": "a.mp4", "conversations": [{"from": "human", "value": "q"}]}]', "gpt")]:
        bad.write_text(content)
        with pytest.raises(InvalidRequestError, match=match):
            read_llava_json(bad, vids)
    with pytest.raises(InvalidRequestError, match="not found"):
        read_llava_json(root / "missing.json", vids)


def test_cli_trains_resumes_and_the_result_loads(llava_data, tmp_path, capsys):
    _, data, vids = llava_data
    out = tmp_path / "ckpt"
    args = ["train", "storm", "--model", "tiny-random", "--data", str(data), "--videos", str(vids),
            "--output", str(out), "--frames", "4", "--device", "cpu", "--save-every", "1"]
    assert main(args + ["--steps", "2"]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "checkpoints" / "step-1").is_dir() and (out / "checkpoints" / "step-2").is_dir()
    assert main(args + ["--steps", "3", "--resume"]) == 0
    assert (out / "checkpoints" / "step-3").is_dir()
    capsys.readouterr()
    assert main(["ask", str(vids / "a.mp4"), "What?", "--model", "tiny-random", "--frames", "8", "--compressor",
                 "storm", "--compressor-option", f"weights={out}", "--budget", "20", "--max-new-tokens", "2",
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["visual_tokens"] <= 20
    assert answer["compressor_stats"]["encoder"] == "trained" and answer["compressor_stats"]["temporal_pool"] == 4
    # user errors come before the model loads, as one line
    assert main(["train", "storm", "--model", "tiny-random", "--data", str(tmp_path / "nope.json"), "--videos",
                 str(vids), "--output", str(out)]) == 2
    assert "training data not found" in capsys.readouterr().err


def test_training_gradients_reach_only_the_encoder(tiny_backbone):
    f, a = flash_order_set(1, 0)[0]
    video = Video.from_frames(torch.from_numpy(f), fps=4.0)
    comp = StormCompressor(tiny_backbone, StormConfig(temporal_pool=4))
    from videollm.compressors.storm_train import freeze_backbone

    freeze_backbone(tiny_backbone)
    loss = answer_loss(tiny_backbone, encode_pooled(comp, comp.encoder, video, None), FLASH_QUESTION, a)
    loss.backward()
    grads = {n: p.grad for n, p in comp.encoder.named_parameters()}
    assert all(g is not None for n, g in grads.items() if "out_proj" in n)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "out_proj" in n)
    assert all(p.grad is None for p in tiny_backbone.model.parameters())
