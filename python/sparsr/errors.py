"""Exceptions raised by sparsr. Every message names what was wrong."""


class SparsrError(Exception):
    """Base class of every error sparsr raises on purpose."""


class CheckpointError(SparsrError, ValueError):
    """A file is not a complete, intact sparsr checkpoint, or describes a network
    this sparsr cannot run."""


class ImageError(SparsrError, ValueError):
    """An input image cannot be upscaled (wrong type, shape, dtype or size)."""
