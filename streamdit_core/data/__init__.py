"""Real video for training: folders of captioned clips (:mod:`.folder`)."""

from .folder import VIDEO_SUFFIXES, ClipFolder, DataError, FolderReport, VideoEntry

__all__ = ["VIDEO_SUFFIXES", "ClipFolder", "DataError", "FolderReport", "VideoEntry"]
