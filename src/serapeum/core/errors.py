"""The root of every error serapeum raises, so callers can catch them all at once."""

from __future__ import annotations


class SerapeumError(Exception):
    """Base class for every error raised by serapeum and its plugins."""


class ConfigurationError(SerapeumError, ValueError):
    """A setting is missing, contradictory or out of range.

    Subclasses ``ValueError`` because the seed API raised ``ValueError`` for
    configuration problems; existing ``except ValueError`` code keeps working.
    """
