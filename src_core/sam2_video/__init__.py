"""SAM 2.1 video tracking: Meta's video predictor API with lazy frames and bounded memory.

:mod:`.source` (a video's frames as model input, read one at a time),
:mod:`.state` (prompts and the bounded memory bank of each object) and
:mod:`.predictor` (``SAM2VideoPredictor``, ``build_sam2_video_predictor``).
"""

from .predictor import SAM2VideoPredictor, build_sam2_video_predictor
from .source import ImageFolderFrames, VideoSource
from .state import VideoState

__all__ = [
    "ImageFolderFrames",
    "SAM2VideoPredictor",
    "VideoSource",
    "VideoState",
    "build_sam2_video_predictor",
]
