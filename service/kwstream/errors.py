"""Exception hierarchy. The CLI prints a ``KwstreamError`` as one line and exits non-zero."""

from __future__ import annotations


class KwstreamError(Exception):
    """Base class of every error that kwstream reports to its user."""


class ConfigError(KwstreamError):
    """Invalid configuration file, key or command-line value."""


class ModelCardError(KwstreamError):
    """A model card that is missing, malformed or does not match its model or the frontend."""


class ModelError(KwstreamError):
    """A model file that cannot be loaded or run by the TFLite interpreter."""


class AudioError(KwstreamError):
    """An audio file or device that cannot be read."""


class LabelFileError(KwstreamError):
    """A label file with an invalid line; the message names the file, line and value."""


class EventFileError(KwstreamError):
    """An events file with an invalid line."""


class RecipeError(KwstreamError):
    """A training or stream recipe with an invalid entry."""


class SynthesisError(KwstreamError):
    """A speech synthesis engine that failed on an utterance of a recipe."""
