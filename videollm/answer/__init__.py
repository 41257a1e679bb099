"""The answering step, LLM → answer, in one place: `prompting` (question + options → the user turn, answer
letters back), `generation` (the decode loop over a `LanguageModel`), `reasoning` (the direct / think /
auto modes, registered in `MODES`) and `reasoning_format` (VideoAuto-R1's boxed-answer / think-tag format).
"""
#: how a multiple-choice answer is produced: free generation (lmms-eval parity) or constrained to the letters
ANSWER_FORMATS = ("free", "choice")
