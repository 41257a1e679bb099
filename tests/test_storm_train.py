"""`videollm train storm`: data checks, an end-to-end run on tiny-random that resumes and loads, and learning."""
import json

import pytest
import torch

from videollm.cli import main
from videollm.compressors.storm import StormCompressor, StormConfig
from videollm.compressors.storm_train import (
    StormTrainConfig,
    TrainExample,
    answer_loss,
    encode_pooled,
    read_llava_json,
    train_storm,
)
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
    assert main(args + ["--steps", "2", "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "loss=" in err and "samples_s=" in err and "answer_tok_s=" in err  # progress: loss and throughput
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


def test_every_gpt_turn_of_a_conversation_is_read_and_is_a_target(tiny_backbone, tmp_path, llava_data):
    from videollm.compressors.storm_train import conversation_ids

    _, _, vids = llava_data
    data = tmp_path / "multi.json"
    data.write_text(json.dumps([{"video": "a.mp4", "conversations": [
        {"from": "human", "value": "<video>\nWhat is shown?"}, {"from": "gpt", "value": "A square."},
        {"from": "human", "value": "Which colour?"}, {"from": "gpt", "value": "White."}]}]))
    (ex,) = read_llava_json(data, vids, num_frames=4)
    assert ex.turns == [("What is shown?", "A square."), ("Which colour?", "White.")]
    tok = tiny_backbone.tokenizer
    ids = conversation_ids(tiny_backbone, ex.turns)
    targets = [tok.decode(seg) for seg, target in ids.rest if target]
    assert targets == ["A square.", "<|im_end|>", "White.", "<|im_end|>"]
    context = "".join(tok.decode(seg) for seg, target in ids.rest if not target)
    assert "Which colour?" in context and "White" not in context and "<|im_start|>assistant" in context
    # without the end token in the loss only the answers' own tokens count
    no_eos = conversation_ids(tiny_backbone, ex.turns, eos_loss=False)
    assert [tok.decode(s) for s, t in no_eos.rest if t] == ["A square.", "White."]


def test_a_padded_batch_gives_the_token_weighted_mean_of_the_single_losses(tiny_backbone):
    from videollm.compressors.storm_train import conversation_ids, conversation_loss

    torch.manual_seed(0)
    convs = [[("Short?", "B")], [("A much longer question about the video?", "The answer is A."), ("More?", "no")]]
    ids = [conversation_ids(tiny_backbone, c) for c in convs]
    visuals = [torch.randn(8, tiny_backbone.hidden_size), torch.randn(12, tiny_backbone.hidden_size)]
    with torch.no_grad():
        singles = [conversation_loss(tiny_backbone, [v], [i]) for v, i in zip(visuals, ids)]
        batch, n = conversation_loss(tiny_backbone, visuals, ids)
    assert n == sum(k for _, k in singles) == sum(i.num_targets for i in ids)
    expected = sum(loss * k for loss, k in singles) / n
    torch.testing.assert_close(batch, expected, rtol=1e-5, atol=1e-5)


def test_the_encoder_runs_a_batch_of_videos_like_one_at_a_time():
    from videollm.compressors.storm import StormEncoder

    torch.manual_seed(0)
    enc = StormEncoder(16, StormConfig())
    for m in enc.mixers():
        torch.nn.init.normal_(m.out_proj.weight, std=0.1)
    x = torch.randn(3, 4, 2, 2, 16)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), torch.stack([enc(v) for v in x]), rtol=1e-5, atol=1e-6)


def test_train_projector_trains_a_copy_that_is_saved_and_loaded(llava_data, tmp_path, tiny_backbone, capsys):
    from safetensors.torch import load_file

    _, data, vids = llava_data
    proj = tiny_backbone.model.model.multi_modal_projector
    before = {k: v.clone() for k, v in proj.state_dict().items()}
    out = tmp_path / "proj"
    assert main(["train", "storm", "--model", "tiny-random", "--data", str(data), "--videos", str(vids),
                 "--output", str(out), "--frames", "4", "--device", "cpu", "--steps", "3", "--batch-size", "2",
                 "--lr", "1e-2", "--train-projector", "--save-every", "0"]) == 0
    state = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("projector.") for k in state) and any(k.startswith("encoder.") for k in state)
    assert json.loads((out / "config.json").read_text())["config"]["train_projector"] is True
    comp = StormCompressor(tiny_backbone, weights=str(out))
    assert comp.projector is not None
    moved = [k for k, v in comp.projector.state_dict().items() if not torch.equal(v, before[k])]
    assert moved, "the projector copy did not train"
    assert all(torch.equal(v, before[k]) for k, v in proj.state_dict().items()), "the backbone's projector changed"
    assert tiny_backbone.model.model.multi_modal_projector is proj
    # the trained copy is what inference uses
    f, _ = flash_order_set(1, 0)[0]
    video = Video.from_frames(torch.from_numpy(f), fps=4.0)
    own = comp(video, budget=16)
    assert own.stats["projector"] == "own (trained)" and own.num_tokens <= 16
    capsys.readouterr()
    assert main(["train", "storm", "--model", "tiny-random", "--data", str(data), "--videos", str(vids),
                 "--output", str(out), "--placement", "pre_projector", "--train-projector"]) == 2
    assert "--train-projector applies to" in capsys.readouterr().err


def test_storm_is_a_weighted_compressor_and_old_checkpoints_load(tiny_backbone, tmp_path):
    from safetensors.torch import save_file

    from videollm.compressors import create_compressor
    from videollm.compressors.base import WeightedCompressor

    comp = StormCompressor(tiny_backbone, StormConfig(temporal_pool=2))
    assert isinstance(comp, WeightedCompressor)
    for m in comp.encoder.mixers():
        torch.nn.init.normal_(m.out_proj.weight, std=0.1)
    # the format before the seam: encoder keys without a prefix
    (tmp_path / "config.json").write_text(json.dumps({"compressor": "storm", "config": {"temporal_pool": 2}}))
    save_file({k: v.contiguous() for k, v in comp.encoder.state_dict().items()}, str(tmp_path / "model.safetensors"))
    old = create_compressor("storm", tiny_backbone, weights=str(tmp_path))
    f, _ = flash_order_set(1, 0)[0]
    video = Video.from_frames(torch.from_numpy(f), fps=4.0)
    assert torch.equal(old(video).embeds, comp(video).embeds) and old.trained
    comp.save_pretrained(tmp_path / "new")
    assert all(k.startswith("encoder.") for k in load_file_keys(tmp_path / "new" / "model.safetensors"))


def load_file_keys(path):
    from safetensors.torch import load_file

    return list(load_file(str(path)))


@pytest.mark.slow
def test_training_learns_the_flash_order_that_pooling_alone_cannot_see(tmp_path):
    """The toy proof in small: after a short run the encoder separates the two orders on its training clips."""
    from videollm.backbones.tiny import build_tiny_random
    from videollm.compressors.storm_train import choice_accuracy

    bb = build_tiny_random(seed=0)  # its own instance: training freezes and uses it
    train = [TrainExample(Video.from_frames(torch.from_numpy(f), fps=4.0), FLASH_QUESTION, a)
             for f, a in flash_order_set(32, 1000)]
    storm = StormConfig(temporal_pool=4, sample_stride=1)
    assert choice_accuracy(bb, StormCompressor(bb, storm), train) == 0.5
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend
    try:
        comp = train_storm(bb, train, StormTrainConfig(output=str(tmp_path), steps=30, batch_size=8, lr=1e-2,
                                                       warmup_steps=5, save_every=0, eos_loss=False,
                                                       cache_features=True, storm=storm))
    finally:
        torch.set_num_threads(threads)
    assert choice_accuracy(bb, comp, train) >= 0.8
