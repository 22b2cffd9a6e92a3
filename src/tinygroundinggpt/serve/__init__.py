"""Serving: an OpenAI-compatible HTTP server (:mod:`.server`, ``tgg serve``) and a Gradio web demo
(:mod:`.web`, ``tgg web``). Only the server's default limits live here, so that ``tgg --help`` shows
them without importing FastAPI or Gradio."""

MIB = 2**20
DEFAULT_MAX_REQUEST_BYTES = 20 * MIB  # room for a base64 image at DEFAULT_MAX_IMAGE_BYTES (4/3 larger)
DEFAULT_MAX_IMAGE_BYTES = 10 * MIB
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
DEFAULT_MAX_NEW_TOKENS_CAP = 256
DEFAULT_MAX_PENDING = 8  # requests being received, answered or waiting; each may hold a decoded image in memory
DEFAULT_BODY_SECONDS = 60.0  # a request body must arrive within this: a slow client would hold a slot
