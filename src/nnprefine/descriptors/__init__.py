"""Behler–Parrinello symmetry functions (n2p2 types 2, 3, 9) and their fast kernels.

- :class:`RadialG2`, :class:`NarrowAngularG3`, :class:`WideAngularG9`: one function each,
  to and from one n2p2 ``symfunction_short`` line;
- :class:`SymmetryFunctionSet`, :func:`paper_set`, :func:`make_set`: sets of functions;
- :class:`Descriptor`: values G, forces from ∂E/∂G (with the virial) and the
  Jacobian–vector product, on ASE ``Atoms``; :class:`Neighbours` is its reusable list;
- :class:`InputScaling`: n2p2's input scaling of G (modes :data:`SCALING_MODES`).
"""

from nnprefine.descriptors.descriptor import Descriptor
from nnprefine.descriptors.functions import (
    CUTOFF_TYPES,
    NarrowAngularG3,
    RadialG2,
    SymmetryFunction,
    SymmetryFunctionSet,
    WideAngularG9,
    make_set,
    paper_set,
)
from nnprefine.descriptors.neighbours import Neighbours, build_neighbours
from nnprefine.descriptors.scaling import SCALING_MODES, InputScaling

__all__ = [
    "CUTOFF_TYPES",
    "SCALING_MODES",
    "Descriptor",
    "InputScaling",
    "NarrowAngularG3",
    "Neighbours",
    "RadialG2",
    "SymmetryFunction",
    "SymmetryFunctionSet",
    "WideAngularG9",
    "build_neighbours",
    "make_set",
    "paper_set",
]
