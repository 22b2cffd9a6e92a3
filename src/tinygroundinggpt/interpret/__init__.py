"""Where the model looks (paper §5.2, Figs. 5-6, A.8).

* :func:`attention_map` – last-layer LLM attention from an answer's tokens (all, box, or text) to the global
  image's patches, summed over heads and tokens, normalised, mapped back onto the original image;
* :func:`feature_similarity` – per encoder (CLIP, DINOv2), the cosine similarity of one patch's features
  to every patch's;
* :func:`overlay_grid` – any patch grid as a heat map over the original image (padding cropped away).
"""

from tinygroundinggpt.interpret.attention import SPANS, AttentionMap, attention_map, attention_maps
from tinygroundinggpt.interpret.heatmap import overlay_grid
from tinygroundinggpt.interpret.similarity import feature_similarity, similarity_panels

__all__ = [
    "SPANS",
    "AttentionMap",
    "attention_map",
    "attention_maps",
    "feature_similarity",
    "overlay_grid",
    "similarity_panels",
]
