"""Videos: lazy random access to frames (:class:`VideoFrames`) and a writer (:func:`write_video`).

Both run the ffmpeg binary that ``imageio-ffmpeg`` ships. :mod:`.frames` explains how
frames are found and counted, :mod:`._ffmpeg` holds the process and log plumbing,
:mod:`.writer` the writer.
"""

from .frames import VideoFrames
from .writer import write_video

__all__ = ["VideoFrames", "write_video"]
