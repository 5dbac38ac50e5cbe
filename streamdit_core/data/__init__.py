"""Real video for training: folders of captioned clips (:mod:`.folder`), and the synthetic world
written out as one (:mod:`.render`)."""

from .folder import VIDEO_SUFFIXES, ClipFolder, DataError, FolderReport, VideoEntry
from .render import render_world_folder

__all__ = ["VIDEO_SUFFIXES", "ClipFolder", "DataError", "FolderReport", "VideoEntry", "render_world_folder"]
