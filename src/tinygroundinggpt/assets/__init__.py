"""Where the files that ship with the package lie: the tiny components (CLIP, DINOv2, Qwen2) and the tiny
TinyGroundingGPT made from them. A light module, so the command line can name them without importing torch."""

from pathlib import Path

TINY = Path(__file__).resolve().parent / "tiny"
SHIPPED = TINY / "tinygroundinggpt"  # the checkpoint `tgg demo` evaluates and the commands default to
