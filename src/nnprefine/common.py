"""Ground-floor helpers that every layer may use: atomic file writes, JSON, seeds.

Nothing here knows about projects, configs or physics, so the library modules
(training, report, dataset, ...) and the workflow layer (:mod:`nnprefine.stages`)
share these without importing each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "derive_seed", "json_default", "save_npz", "write_json"]


def derive_seed(master: int, *names: object) -> int:
    """A seed for one task, derived deterministically from the master seed and its names."""
    text = json.dumps([int(master), *[str(n) for n in names]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends.

    Readers never see a half-written file: if the block raises, the old file (or none) stays
    and the temporary is removed. The temporary keeps ``path``'s suffix, so writers that
    choose a format by suffix (``ase.io.write``, ``np.savez``) work unchanged.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per writer (two processes never share a temporary) and hidden (a leftover of a
    # killed writer matches no glob such as "explore-*.npz")
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{path.stem}.tmp-{token}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars and arrays and paths (else TypeError)."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` in one atomic step."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=json_default) + "\n")


def save_npz(path: Path, **arrays: Any) -> None:
    """``np.savez_compressed`` to ``path`` in one atomic step."""
    import numpy as np

    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def recover_directory_swap(directory: Path) -> None:
    """Finish a directory swap that a killed process left half done: ``directory`` moved
    aside to ``.<name>.old`` and its replacement not yet renamed into place. The old,
    complete directory is put back (the new one was never visible, so nothing is lost
    that was ever read)."""
    old = directory.with_name(f".{directory.name}.old")
    if not directory.exists() and old.is_dir():
        os.replace(old, directory)
