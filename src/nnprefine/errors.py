"""The package's exception hierarchy.

Every error raised on purpose by nnprefine derives from :class:`NnprefineError`, so a
caller can catch them all; each message says what was wrong and how to fix it.
"""

from __future__ import annotations


class NnprefineError(Exception):
    """Base class of all errors raised by nnprefine."""


class ConfigError(NnprefineError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class ReferenceCalculationError(NnprefineError, RuntimeError):
    """A reference (label) calculation failed, returned NaN, or did not converge."""


class UnsupportedElementError(NnprefineError, ValueError):
    """A structure holds an element that a potential or model does not cover."""


class DatasetError(NnprefineError, ValueError):
    """A frame cannot be stored or read: missing labels, NaN, wrong shapes."""


class ModelError(NnprefineError, ValueError):
    """A model or model file is invalid or does not fit the input."""


class SimulationError(NnprefineError, RuntimeError):
    """An MD run became unphysical (NaN, overlapping atoms, exploding energy)."""


class NonFiniteResultError(SimulationError):
    """The calculator driving an MD run returned a NaN or infinite energy or force."""


class NonFiniteModelOutputError(ModelError, NonFiniteResultError):
    """A model gave a NaN or infinite energy or force: a model error, and, in MD, a
    non-finite result that ends the trajectory as unphysical rather than the campaign."""
