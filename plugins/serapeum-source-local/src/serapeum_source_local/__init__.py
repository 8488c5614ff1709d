"""Local-file model source: ``model_path`` (a path or ``file://`` URI) or a ``file://`` ``model_url``."""

from serapeum_source_local.source import LOCAL_SOURCE, ModelFileNotFoundError, path_from_request

__all__ = ["LOCAL_SOURCE", "ModelFileNotFoundError", "path_from_request"]
