"""The answering step, LLM → answer, in one place: `prompting` (question + options → the user turn, answer
letters back), `generation` (the decode loop over a `LanguageModel`), `reasoning` (the direct / think /
auto modes, registered in `MODES`) and `reasoning_format` (VideoAuto-R1's boxed-answer / think-tag format).
Below the loop: `decode_step` (the lean one-token LLM step, with `decode_ops`' small C ops), `prefix_cache`
(a video's prompt prefix prefilled once) and `static_decode` (the opt-in compiled loop).
"""
#: how a multiple-choice answer is produced: free generation (lmms-eval parity) or constrained to the letters
ANSWER_FORMATS = ("free", "choice")
