"""Videos: lazy random access to frames (:class:`VideoFrames`) and a writer (:func:`write_video`).

Both run the ffmpeg binary that ``imageio-ffmpeg`` ships. :mod:`.frames` explains how
frames are found and counted, :mod:`._ffmpeg` holds the process and log plumbing,
:mod:`.writer` the writer.
"""

from .frames import VideoFrames
from .writer import write_video

#: The file suffixes read as videos (the command line, batch labeling, napari's reader;
#: napari.yaml lists them for the reader, a test keeps the two equal). A GIF is an image,
#: except to ``napari-sam track``, which reads an animated one as frames.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")

__all__ = ["VIDEO_SUFFIXES", "VideoFrames", "write_video"]
