"""Text prompts: segment the objects a text names, with CLIP choosing among SAM's masks.

Needs the optional extra ``napari-sam[text]`` plus open_clip installed without its
dependencies (see the README, "Text prompts")::

    from src_core.text import load_clip, segment_text, matches_to_labels

    scorer = load_clip()                    # OpenAI's ViT-B/32, downloaded on first use
    matches = segment_text(predictor, image, "nucleus", scorer=scorer, top_k=20)
    labels = matches_to_labels(matches, image.shape[:2])

Planes larger than the model sees whole go tile by tile: :func:`segment_text_tiled`
with a :class:`~src_core.tiling.TiledPredictor` (masks as crops).

Importing this package imports torch but not open_clip; open_clip is imported
(:mod:`._openclip`) when a tokenizer or a model is first needed.
"""

from ._openclip import INSTALL_HINT, TextExtraMissing, import_open_clip
from .clip import (
    CLIP_MODEL,
    CLIP_WEIGHTS,
    ClipScorer,
    Scores,
    TextPromptError,
    build_clip,
    check_text,
    clip_weights_path,
    get_tokenizer,
    load_clip,
    load_clip_state_dict,
    tokenize,
)
from .crops import BACKGROUNDS, DEFAULT_BACKGROUND, DEFAULT_CONTEXT, context_box, extract_crop, extract_crops, mask_box
from .search import (
    DEFAULT_NEGATIVES,
    DEFAULT_THRESHOLD,
    NoCandidates,
    NoMatch,
    TextMatch,
    matches_to_labels,
    negative_texts,
    segment_text,
    select_matches,
)
from .tiled import TiledTextMatch, read_clip_crop, segment_text_tiled, visible_parts

__all__ = [
    "BACKGROUNDS", "CLIP_MODEL", "CLIP_WEIGHTS", "ClipScorer", "DEFAULT_BACKGROUND", "DEFAULT_CONTEXT",
    "DEFAULT_NEGATIVES", "DEFAULT_THRESHOLD", "INSTALL_HINT", "NoCandidates", "NoMatch", "Scores",
    "TextExtraMissing", "TextMatch", "TextPromptError", "TiledTextMatch", "build_clip", "check_text", "clip_weights_path",
    "context_box", "extract_crop", "extract_crops", "get_tokenizer", "import_open_clip", "load_clip",
    "load_clip_state_dict", "mask_box", "matches_to_labels", "negative_texts", "read_clip_crop", "segment_text",
    "segment_text_tiled", "select_matches", "tokenize", "visible_parts",
]
