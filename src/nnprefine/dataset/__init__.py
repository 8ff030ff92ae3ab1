"""Labelled frames in SQLite with provenance; import and export of training sets.

Reference labels are the most expensive thing this package produces, so the store never
loses or duplicates one:

- :class:`FrameStore` keeps frames (structure, energy, forces, optional stress) and their
  provenance (origin, iteration, selection metrics, reference spec and version, seed,
  trajectory, time, creation time) in one SQLite file; every append is a transaction,
  identical calculations are stored once (content hash, unique index), and each frame's
  train/test split is fixed at insert from its geometry. Failed labels go to a quarantine
  table.
- :func:`read_extxyz`, :func:`write_extxyz`, :func:`read_n2p2_data`, :func:`write_n2p2_data` move
  frames to and from extended XYZ and n2p2 ``input.data``, with floats that round-trip
  exactly.

Example::

    from nnprefine.dataset import FrameStore, read_n2p2_data, write_n2p2_data

    with FrameStore("frames.sqlite", elements=("Be",)) as store:
        store.add_many(read_n2p2_data("input.data"), origin="import",
                       reference={"calculator": "vasp:Vasp", "kwargs": {"encut": 400}})
        write_n2p2_data("train.data", store.frames(split="train"))

Units: eV, Å, eV/Å, eV/Å³ and fs.
"""

from __future__ import annotations

from nnprefine.dataset._formats import read_extxyz, read_n2p2_data, write_extxyz, write_n2p2_data
from nnprefine.dataset._frame import content_hash
from nnprefine.dataset._store import FrameStore

__all__ = [
    "FrameStore",
    "content_hash",
    "read_extxyz",
    "write_extxyz",
    "read_n2p2_data",
    "write_n2p2_data",
]
