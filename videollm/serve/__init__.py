"""`videollm serve`: an OpenAI-compatible HTTP server for video question answering (docs/serve.md).

Import `videollm.serve.app` / `.engine` for the parts; this package root stays light (no FastAPI import).
"""
