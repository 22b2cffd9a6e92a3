"""TinyGroundingGPT: a grounding multimodal LLM with multi-scale vision (CLIP + DINOv2) and object images."""

__version__ = "0.1.0"
