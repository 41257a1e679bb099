"""The runtime floor: how an LLM runs, below every model family.

`generation` (the decode loop over a `LanguageModel`), `decode_step` (the lean one-token CPU step with
`decode_ops`' small C ops from `csrc/`), `prefix_cache` (a video's prompt prefix prefilled once, shared by
every question) and `static_decode` (the opt-in static-cache compiled loop). Backbones import from here;
nothing here imports a backbone, a compressor or the answering modes.
"""
