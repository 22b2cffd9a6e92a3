"""The built-in synthetic grounding world: procedural scenes, language, and every data file the
pipeline consumes, in the real formats (project JSONL, refer API, POPE), deterministically from a seed.

* :mod:`.scene` – :func:`generate_scene`, :func:`render_scene`, :class:`Scene` (the scene graph);
* :mod:`.language` – :func:`referring_expressions`, :func:`caption`, :func:`relation_triples`;
* :mod:`.stages` – per-stage sample builders (:data:`STAGE_FILES`), :data:`REC_EVAL_PROMPT`;
* :mod:`.formats` – refer (``refs(unc).p`` + ``instances.json``) and POPE writers;
* :mod:`.build` – :func:`write_world` (layout in its docstring) and :func:`contact_sheet`.
"""

from tinygroundinggpt.world.build import contact_sheet, write_world
from tinygroundinggpt.world.language import Expression, caption, referring_expressions, relation_triples
from tinygroundinggpt.world.scene import DEFAULT_HELDOUT, Scene, SceneConfig, WorldObject, generate_scene, render_scene
from tinygroundinggpt.world.stages import REC_EVAL_PROMPT, STAGE_FILES

__all__ = [
    "DEFAULT_HELDOUT",
    "REC_EVAL_PROMPT",
    "STAGE_FILES",
    "Expression",
    "Scene",
    "SceneConfig",
    "WorldObject",
    "caption",
    "contact_sheet",
    "generate_scene",
    "referring_expressions",
    "relation_triples",
    "render_scene",
    "write_world",
]
