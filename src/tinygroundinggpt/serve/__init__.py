"""Serving: an OpenAI-compatible HTTP server (:mod:`.server`, ``tgg serve``) and a Gradio web demo
(:mod:`.web`, ``tgg web``). Nothing is imported here, so FastAPI and Gradio load only when used."""
