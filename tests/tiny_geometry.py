"""The vit_tiny architecture at a 256-pixel input, for plumbing tests on random weights.

The built-in model runs at 512 px; a 256-px input with the same blocks embeds four
times faster, and the tests written around it (tiling thresholds at 4x the input:
1,024 px) keep their sizes. Checkpoints saved from it load as "vit_tiny" at 256 px
(``config_for_weights`` reads the input size from the weights).
"""

from dataclasses import replace

from src_core.model.build import MODEL_CONFIGS

TINY_256 = replace(MODEL_CONFIGS["vit_tiny"], image_size=256)
