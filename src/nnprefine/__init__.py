"""nnprefine: Behler-Parrinello neural-network potentials refined by query-by-committee.

Data flows one way through the modules:
structures -> reference -> dataset -> descriptors -> model/training -> md -> refine
-> sputter -> report, driven by ``cli`` over a TOML configuration. Units are eV, Å, fs,
amu and K throughout the public API.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
