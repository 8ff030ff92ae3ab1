"""FrameStore: labelled frames with provenance in one SQLite file.

Plain ``sqlite3`` in WAL mode with ``synchronous=FULL``: every append is one transaction,
so a frame is stored completely or not at all, and a process killed at any moment
(SIGKILL, power cut after the commit returned) leaves a readable database holding every
committed frame. Numeric arrays are little-endian float64 blobs and energies SQLite REALs
(IEEE doubles), so numbers come back bit for bit.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import sqlite3
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms

from nnprefine import __version__
from nnprefine.dataset import _frame
from nnprefine.errors import DatasetError

_FORMAT = "nnprefine-frames"
_SCHEMA_VERSION = 3  # 2: the split 'validation'; 3: a checksum of every labelled row
#: frames of this origin form the validation split: never trained on, never tested on
VALIDATION_ORIGIN = "validation"
_SPLITS = ("train", "test", "validation")
_DEFAULT_TEST_FRACTION = 0.1
_GROUP_COLUMNS = ("iteration", "origin", "split")

_STRUCTURE_COLUMNS = """
    n_atoms INTEGER NOT NULL CHECK (n_atoms > 0),
    formula TEXT NOT NULL,
    numbers BLOB NOT NULL CHECK (length(numbers) = 8 * n_atoms),
    positions BLOB NOT NULL CHECK (length(positions) = 24 * n_atoms),
    cell BLOB NOT NULL CHECK (length(cell) = 72),
    pbc TEXT NOT NULL CHECK (length(pbc) = 3),
"""
_PROVENANCE_COLUMNS = """
    origin TEXT NOT NULL,
    iteration INTEGER NOT NULL CHECK (iteration >= 0),
    reference TEXT NOT NULL,
    reference_version TEXT,
    code_version TEXT NOT NULL,
    selection TEXT,
    seed INTEGER,
    trajectory TEXT,
    time_fs REAL,
    created TEXT NOT NULL
"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    split TEXT NOT NULL CHECK (split IN ('train', 'test', 'validation')),
    {_STRUCTURE_COLUMNS}
    energy_eV REAL NOT NULL,
    forces BLOB NOT NULL CHECK (length(forces) = 24 * n_atoms),
    stress BLOB CHECK (stress IS NULL OR length(stress) = 48),
    {_PROVENANCE_COLUMNS},
    checksum TEXT
);
CREATE INDEX IF NOT EXISTS frames_iteration ON frames (iteration);
CREATE INDEX IF NOT EXISTS frames_origin ON frames (origin);
CREATE INDEX IF NOT EXISTS frames_split ON frames (split);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    error TEXT NOT NULL,
    {_STRUCTURE_COLUMNS}
    {_PROVENANCE_COLUMNS}
);
CREATE INDEX IF NOT EXISTS quarantine_iteration ON quarantine (iteration);
"""

_PROVENANCE_KEYS = (
    "origin",
    "iteration",
    "reference",
    "reference_version",
    "code_version",
    "selection",
    "seed",
    "trajectory",
    "time_fs",
    "created",
)


#: the columns a labelled row's checksum covers (structure, labels, split)
_CHECKSUMMED = (
    "hash", "split", "n_atoms", "numbers", "positions", "cell", "pbc", "energy_eV", "forces",
    "stress",
)  # fmt: skip


def _checksum(row: Mapping[str, Any]) -> str:
    """sha256 (hex, 16 characters) of a row's structure and labels, as stored."""
    h = hashlib.sha256()
    for key in _CHECKSUMMED:
        value = row[key]
        if isinstance(value, float):
            value = value.hex()
        h.update(key.encode())
        h.update(value if isinstance(value, bytes) else repr(value).encode())
    return h.hexdigest()[:16]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


class FrameStore:
    """Labelled frames (structure, energy, forces, optional stress) with provenance, in SQLite.

    ``FrameStore(path)`` creates the file or opens an existing store; use it as a context
    manager or call :meth:`close`. Labels are read from ``atoms.calc.results`` (energy in
    eV, forces in eV/Å, optional stress in eV/Å³) — normally a ``SinglePointCalculator`` —
    and never computed here.

    Each frame gets a content hash (atomic numbers, positions, cell, pbc and the reference
    spec, see :func:`content_hash`) with a unique index: adding the same calculation again
    stores nothing and returns None. Its split ('train' or 'test') is fixed when it is
    inserted, by whether a uniform number derived from its geometry alone is below
    ``test_fraction``, so appending never moves a frame between sets and the same
    structure gets the same split in every store. Frames of origin 'validation' form a
    third split, 'validation', that ``frames(split="train")`` and ``"test"`` never return.

    Failed reference calculations go to a separate quarantine table (:meth:`quarantine`);
    they are counted but never returned as labels. :meth:`status` tells a resumed loop
    whether a candidate was already labelled or quarantined.

    Args:
        path: the SQLite file; its folder must exist.
        elements: chemical symbols this store accepts, e.g. ``("Be",)``; None accepts every
            element. Checked on every append (not stored in the file).
        test_fraction: fraction of frames in the test set, in [0, 1). Fixed when the store
            is created (default 0.1); opening it with a different value is an error.
        timeout_s: how long to wait for another process's write lock, s.

    Concurrency: readers never block, one writer at a time (others wait ``timeout_s``).
    WAL mode needs a local file system (not NFS).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        elements: Collection[str] | None = None,
        test_fraction: float | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self._allowed = _frame.element_numbers(elements)
        self.elements = (
            None
            if self._allowed is None
            else tuple(_frame.chemical_symbols[z] for z in sorted(self._allowed))
        )
        if test_fraction is not None and not (
            isinstance(test_fraction, int | float) and 0.0 <= test_fraction < 1.0
        ):
            raise DatasetError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")
        if not self.path.parent.is_dir():
            raise DatasetError(
                f"cannot create the frame store {self.path}: folder {self.path.parent} does not "
                "exist; create it first"
            )
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=timeout_s, isolation_level=None
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self.test_fraction = self._set_up(test_fraction)
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise DatasetError(
                f"{self.path} cannot be opened as a frame store ({exc}); give the path of an "
                "nnprefine frame store or of a file that does not exist yet"
            ) from exc
        except BaseException:
            self._close_quietly()
            raise

    # -- set-up and life cycle ---------------------------------------------------------

    def _read_meta(self) -> dict[str, str]:
        conn = self._db
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        meta: dict[str, str] = {}
        if "meta" in tables:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if tables and meta.get("format") != _FORMAT:
            raise DatasetError(
                f"{self.path} is an SQLite database but not an nnprefine frame store "
                f"(tables: {sorted(tables)}); choose another path"
            )
        return meta

    def _set_up(self, test_fraction: float | None) -> float:
        meta = self._read_meta()  # a plain read: opening never waits for a busy writer
        if not meta:
            with self._transaction() as conn:
                meta = self._read_meta()  # again under the write lock: another process may have won
                if not meta:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    fraction = _DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
                    conn.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [
                            ("format", _FORMAT),
                            ("schema_version", str(_SCHEMA_VERSION)),
                            ("test_fraction", repr(float(fraction))),
                            ("created", _now()),
                            ("code_version", __version__),
                        ],
                    )
                    return float(fraction)
        if int(meta["schema_version"]) > _SCHEMA_VERSION:
            raise DatasetError(
                f"{self.path} has frame-store schema {meta['schema_version']}, newer than this "
                f"nnprefine ({__version__}, schema {_SCHEMA_VERSION}); upgrade nnprefine"
            )
        if int(meta["schema_version"]) < 2:
            self._migrate_to_2()
        if int(meta["schema_version"]) < 3:
            self._migrate_to_3()
        stored = float(meta["test_fraction"])
        if test_fraction is not None and float(test_fraction) != stored:
            raise DatasetError(
                f"{self.path} was created with test_fraction={stored}; opening it with "
                f"test_fraction={test_fraction} would mix two splits. Omit test_fraction, "
                "or start a new store"
            )
        return stored

    def _migrate_to_2(self) -> None:
        """Schema 1 → 2: the frames table accepts the split 'validation' (rows unchanged)."""
        with self._transaction() as conn:
            if int(dict(conn.execute("SELECT key, value FROM meta"))["schema_version"]) >= 2:
                return  # another process migrated it first
            old = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'frames'").fetchone()[0]
            new = old.replace("split IN ('train', 'test')", "split IN " + str(_SPLITS))
            conn.execute("ALTER TABLE frames RENAME TO frames_v1")
            conn.execute(new)
            conn.execute("INSERT INTO frames SELECT * FROM frames_v1")
            conn.execute("DROP TABLE frames_v1")
            for statement in _SCHEMA.split(";"):
                if "CREATE INDEX" in statement and "frames_" in statement:
                    conn.execute(statement)
            conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    def _migrate_to_3(self) -> None:
        """Schema 2 → 3: a checksum column, filled for the rows already there (corruption
        from before the migration cannot be told; from now on it is found on read)."""
        with self._transaction() as conn:
            if int(dict(conn.execute("SELECT key, value FROM meta"))["schema_version"]) >= 3:
                return
            columns = {r[1] for r in conn.execute("PRAGMA table_info(frames)")}
            if "checksum" not in columns:
                conn.execute("ALTER TABLE frames ADD COLUMN checksum TEXT")
            cursor = conn.execute(f"SELECT id, {', '.join(_CHECKSUMMED)} FROM frames")
            sums = [(_checksum(dict(zip(_CHECKSUMMED, r[1:], strict=True))), r[0]) for r in cursor]
            conn.executemany("UPDATE frames SET checksum = ? WHERE id = ?", sums)
            conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DatasetError(f"the frame store {self.path} is closed; open it again")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._db
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise DatasetError(
                f"cannot write to {self.path} ({exc}): another process held its write lock "
                "for longer than timeout_s; retry, or open the store with a longer timeout_s"
            ) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise DatasetError(
                    f"writing to {self.path} failed ({exc}); nothing of this append was stored"
                ) from exc
            raise

    def _close_quietly(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        """Close the database; committed frames are already on disk."""
        self._close_quietly()

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"{self.count()} frames"
        return f"FrameStore({str(self.path)!r}, {state}, test_fraction={self.test_fraction})"

    def __len__(self) -> int:
        return self.count()

    # -- writing -----------------------------------------------------------------------

    def _provenance(
        self,
        *,
        origin: str,
        iteration: int,
        reference: Mapping[str, Any] | str | None,
        reference_version: str | None,
        selection: Mapping[str, Any] | None,
        seed: int | None,
        trajectory: str | None,
        time_fs: float | None,
    ) -> dict[str, Any]:
        if not isinstance(origin, str) or not origin.strip():
            raise DatasetError(
                f"origin must be a non-empty string such as 'initial', 'refine', 'production' "
                f"or 'import', got {origin!r}"
            )
        if isinstance(iteration, bool) or not isinstance(iteration, int | np.integer):
            raise DatasetError(f"iteration must be an integer >= 0, got {iteration!r}")
        if iteration < 0:
            raise DatasetError(f"iteration must be >= 0, got {iteration}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
            raise DatasetError(f"seed must be an integer or None, got {seed!r}")
        if time_fs is not None and (
            isinstance(time_fs, bool)
            or not isinstance(time_fs, int | float | np.number)
            or not math.isfinite(float(time_fs))
        ):
            raise DatasetError(f"time_fs must be a finite time in fs or None, got {time_fs!r}")
        if selection is not None and not isinstance(selection, Mapping):
            raise DatasetError(
                "selection must be a dict of metric values, e.g. "
                f"{{'energy_spread_eV_per_atom': 0.03}}, got {type(selection).__name__}"
            )
        if reference_version is not None and not isinstance(reference_version, str):
            raise DatasetError(f"reference_version must be a string, got {reference_version!r}")
        return {
            "origin": origin,
            "iteration": int(iteration),
            "reference": _frame.reference_json(reference),
            "reference_version": reference_version,
            "code_version": __version__,
            "selection": None
            if selection is None
            else _frame.canonical_json(dict(selection), "selection"),
            "seed": None if seed is None else int(seed),
            "trajectory": None if trajectory is None else str(trajectory),
            "time_fs": None if time_fs is None else float(time_fs),
            "created": _now(),
        }

    def _row(
        self, atoms: Atoms, where: str, provenance: dict[str, Any], labelled: bool
    ) -> dict[str, Any]:
        structure = _frame.structure_of(atoms, where)
        _frame.check_elements(structure.numbers, self._allowed, where)
        row: dict[str, Any] = {
            "hash": _frame.content_hash_of(structure, provenance["reference"]),
            "n_atoms": structure.n_atoms,
            "formula": atoms.get_chemical_formula(),
            "numbers": structure.numbers.astype("<i8").tobytes(),
            "positions": structure.positions.astype("<f8").tobytes(),
            "cell": structure.cell.astype("<f8").tobytes(),
            "pbc": structure.pbc_text,
            **provenance,
        }
        if labelled:
            labels = _frame.labels_of(atoms, where)
            test = _frame.split_uniform(structure) < self.test_fraction
            row["split"] = "test" if test else "train"
            if provenance["origin"] == VALIDATION_ORIGIN:
                row["split"] = "validation"
            row["energy_eV"] = labels.energy_eV
            row["forces"] = labels.forces.astype("<f8").tobytes()
            row["stress"] = None if labels.stress is None else labels.stress.astype("<f8").tobytes()
            row["checksum"] = _checksum(row)
        return row

    def add(
        self,
        atoms: Atoms,
        *,
        origin: str,
        reference: Mapping[str, Any] | str | None,
        iteration: int = 0,
        reference_version: str | None = None,
        selection: Mapping[str, Any] | None = None,
        seed: int | None = None,
        trajectory: str | None = None,
        time_fs: float | None = None,
    ) -> int | None:
        """Store one labelled frame; return its id, or None if it was already stored.

        Args:
            atoms: the structure; labels from ``atoms.calc.results``: ``energy`` (eV),
                ``forces`` ((n_atoms, 3) float64, eV/Å), optionally ``stress`` (Voigt (6,)
                or (3, 3), eV/Å³).
            origin: where it comes from: 'initial', 'refine', 'production', 'import', ...
            reference: the reference spec that produced the labels (see
                ``nnprefine.reference.make_reference``); part of the content hash.
            iteration: refinement iteration k that added the frame (0 for initial data).
            reference_version: version of the reference code (e.g. the DFT code), if known.
            selection: why it was selected, e.g. committee disagreements
                ``{"energy_spread_eV_per_atom": 0.031, "max_force_spread_eV_per_A": 2.4}``.
            seed: random seed of the trajectory the frame was taken from.
            trajectory: id of that trajectory; time_fs: time of the frame in it, fs.

        Raises:
            DatasetError: missing, stale, NaN or wrongly shaped labels or bad provenance.
            UnsupportedElementError: an element outside the store's ``elements``.
        """
        ids = self.add_many(
            [atoms],
            origin=origin,
            reference=reference,
            iteration=iteration,
            reference_version=reference_version,
            selection=selection,
            seed=seed,
            trajectory=trajectory,
            time_fs=time_fs,
        )
        return ids[0]

    def add_many(
        self,
        frames: Sequence[Atoms],
        *,
        origin: str,
        reference: Mapping[str, Any] | str | None,
        iteration: int = 0,
        reference_version: str | None = None,
        selection: Mapping[str, Any] | None = None,
        seed: int | None = None,
        trajectory: str | None = None,
        time_fs: float | None = None,
    ) -> list[int | None]:
        """Store many labelled frames in one transaction: all of them, or (on error) none.

        Same arguments as :meth:`add`, applied to every frame. Every frame is checked before
        anything is written. Returns one entry per frame: its new id, or None for a
        duplicate (of a stored frame or of an earlier frame in ``frames``).
        """
        provenance = self._provenance(
            origin=origin,
            iteration=iteration,
            reference=reference,
            reference_version=reference_version,
            selection=selection,
            seed=seed,
            trajectory=trajectory,
            time_fs=time_fs,
        )
        rows = [
            self._row(atoms, f"frame {i}", provenance, labelled=True)
            for i, atoms in enumerate(frames)
        ]
        if not rows:
            return []
        columns = list(rows[0])
        sql = (
            f"INSERT INTO frames ({', '.join(columns)}) VALUES "
            f"({', '.join(':' + c for c in columns)}) ON CONFLICT (hash) DO NOTHING"
        )
        ids: list[int | None] = []
        with self._transaction() as conn:
            for row in rows:
                cursor = conn.execute(sql, row)
                if cursor.rowcount == 1:
                    ids.append(cursor.lastrowid)
                else:
                    ids.append(None)
                    self._warn_if_labels_differ(conn, row)
        return ids

    @staticmethod
    def _warn_if_labels_differ(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        stored = conn.execute(
            "SELECT id, energy_eV, forces FROM frames WHERE hash = ?", (row["hash"],)
        ).fetchone()
        if stored is None:
            return
        forces_old = np.frombuffer(stored[2], dtype="<f8")
        forces_new = np.frombuffer(row["forces"], dtype="<f8")
        d_energy = abs(stored[1] - row["energy_eV"])
        d_force = float(np.max(np.abs(forces_old - forces_new)))
        if d_energy > 1e-6 or d_force > 1e-4:
            warnings.warn(
                f"a duplicate of frame {stored[0]} (same structure and reference spec) came "
                f"with different labels (|ΔE| = {d_energy:.3g} eV, max |ΔF| = {d_force:.3g} "
                "eV/Å); the stored labels are kept. Is the reference deterministic, and does "
                "its spec hold every setting that changes results?",
                stacklevel=4,
            )

    def quarantine(
        self,
        atoms: Atoms,
        error: str,
        *,
        origin: str,
        reference: Mapping[str, Any] | str | None,
        iteration: int = 0,
        reference_version: str | None = None,
        selection: Mapping[str, Any] | None = None,
        seed: int | None = None,
        trajectory: str | None = None,
        time_fs: float | None = None,
    ) -> int | None:
        """Record a candidate whose reference calculation failed; never used as a label.

        ``error`` is the error text (e.g. ``repr(exc)``); labels on ``atoms``, if any, are
        ignored. Returns the quarantine id, or None if this candidate (same content hash)
        is already quarantined (the first record is kept).

        Raises:
            DatasetError: the candidate is already stored as a labelled frame.
        """
        if not isinstance(error, str) or not error.strip():
            raise DatasetError("error must be the non-empty text of the failure")
        provenance = self._provenance(
            origin=origin,
            iteration=iteration,
            reference=reference,
            reference_version=reference_version,
            selection=selection,
            seed=seed,
            trajectory=trajectory,
            time_fs=time_fs,
        )
        row = self._row(atoms, "quarantined frame", provenance, labelled=False)
        row["error"] = error
        columns = list(row)
        with self._transaction() as conn:
            hit = conn.execute("SELECT id FROM frames WHERE hash = ?", (row["hash"],)).fetchone()
            if hit is not None:
                raise DatasetError(
                    f"this candidate is already labelled (frame {hit[0]}); check "
                    "store.status(atoms, reference) before calling the reference"
                )
            cursor = conn.execute(
                f"INSERT INTO quarantine ({', '.join(columns)}) VALUES "
                f"({', '.join(':' + c for c in columns)}) ON CONFLICT (hash) DO NOTHING",
                row,
            )
            return cursor.lastrowid if cursor.rowcount == 1 else None

    # -- reading -----------------------------------------------------------------------

    def status(
        self, candidate: Atoms | str, reference: Mapping[str, Any] | str | None = None
    ) -> Literal["labelled", "quarantined"] | None:
        """'labelled', 'quarantined' or None for a candidate not seen before.

        ``candidate`` is an ``Atoms`` (then give its ``reference`` spec) or a content hash
        from :func:`content_hash`. A quarantined candidate labelled later is 'labelled'.
        """
        if isinstance(candidate, str):
            key = candidate.lower()
            if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
                raise DatasetError(f"{candidate!r} is not a content hash (64 hex digits)")
        else:
            key = _frame.content_hash(candidate, reference)
        conn = self._db
        if conn.execute("SELECT 1 FROM frames WHERE hash = ?", (key,)).fetchone():
            return "labelled"
        if conn.execute("SELECT 1 FROM quarantine WHERE hash = ?", (key,)).fetchone():
            return "quarantined"
        return None

    @staticmethod
    def _where(
        split: str | None,
        iteration: int | None,
        origin: str | None,
        max_iteration: int | None = None,
        labelled: bool = True,
    ) -> tuple[str, list[Any]]:
        if split not in (None, *_SPLITS):
            raise DatasetError(
                f"split must be 'train', 'test', 'validation' or None, got {split!r}"
            )
        clauses, params = [], []
        if split is None and labelled:
            # the validation split only when asked for by name: no query that forgets
            # the split can hand validation frames to training
            clauses.append("split != 'validation'")
        for column, op, value in (
            ("split", "=", split),
            ("iteration", "=", iteration),
            ("origin", "=", origin),
            ("iteration", "<=", max_iteration),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def count(
        self,
        split: Literal["train", "test", "validation"] | None = None,
        iteration: int | None = None,
        origin: str | None = None,
        *,
        max_iteration: int | None = None,
    ) -> int:
        """Number of labelled frames matching every given filter (None = any)."""
        where, params = self._where(split, iteration, origin, max_iteration)
        return self._db.execute(f"SELECT COUNT(*) FROM frames{where}", params).fetchone()[0]

    def counts(self, by: str | Sequence[str] = "iteration") -> dict[Any, int]:
        """Numbers of labelled frames grouped by 'iteration', 'origin' and/or 'split'.

        ``by="origin"`` gives ``{"initial": 120, "refine": 40}``; a sequence such as
        ``("iteration", "split")`` gives tuple keys ``{(0, "test"): 12, (0, "train"): 108}``.
        """
        columns = [by] if isinstance(by, str) else list(by)
        bad = [c for c in columns if c not in _GROUP_COLUMNS]
        if bad or not columns:
            raise DatasetError(f"counts(by=...) takes columns from {_GROUP_COLUMNS}, got {by!r}")
        names = ", ".join(columns)
        rows = self._db.execute(
            f"SELECT {names}, COUNT(*) FROM frames GROUP BY {names} ORDER BY {names}"
        ).fetchall()
        if isinstance(by, str):
            return {row[0]: row[1] for row in rows}
        return {tuple(row[:-1]): row[-1] for row in rows}

    def fingerprint(self, max_id: int | None = None) -> dict[str, Any]:
        """``{"frames", "max_id", "sha256"}`` of the labelled frames with id ≤ ``max_id``
        (all when None): their count, the largest id and a sha256 (hex, 16 characters) of
        their content hashes in id order. Frames added later do not change it."""
        sql, args = "SELECT id, hash FROM frames", ()
        if max_id is not None:
            sql, args = sql + " WHERE id <= ?", (int(max_id),)
        h = hashlib.sha256()
        n, top = 0, 0
        for frame_id, content in self._db.execute(sql + " ORDER BY id", args):
            h.update(content.encode())
            n, top = n + 1, frame_id
        return {"frames": n, "max_id": top, "sha256": h.hexdigest()[:16]}

    def counts_per_iteration(self) -> dict[int, dict[str, int]]:
        """``{k: {"train": n, "test": m, "total": n + m, "quarantined": q}}`` for every k."""
        out: dict[int, dict[str, int]] = {}

        def entry(k: int) -> dict[str, int]:
            return out.setdefault(k, {"train": 0, "test": 0, "total": 0, "quarantined": 0})

        for (k, split), n in self.counts(("iteration", "split")).items():
            if split == "validation":
                continue  # not part of the data set the models learn from
            entry(k)[split] = n
            entry(k)["total"] += n
        conn = self._db
        for k, n in conn.execute("SELECT iteration, COUNT(*) FROM quarantine GROUP BY iteration"):
            entry(k)["quarantined"] = n
        return dict(sorted(out.items()))

    def n_quarantined(self, iteration: int | None = None) -> int:
        """Number of quarantined candidates (all, or of one iteration)."""
        where, params = self._where(None, iteration, None, labelled=False)
        return self._db.execute(f"SELECT COUNT(*) FROM quarantine{where}", params).fetchone()[0]

    def frames(
        self,
        split: Literal["train", "test", "validation"] | None = None,
        iteration: int | None = None,
        origin: str | None = None,
        *,
        max_iteration: int | None = None,
    ) -> list[Atoms]:
        """Labelled frames matching every given filter, in insertion order.

        Frames of the validation split come only with ``split="validation"``.
        Each is an ``Atoms`` whose ``.calc`` is a ``SinglePointCalculator`` with energy
        (eV), forces (eV/Å) and stress (eV/Å³, if stored), and whose ``.info`` holds the
        provenance: ``frame_id``, ``content_hash``, ``split``, ``origin``, ``iteration``,
        ``reference`` (dict), ``reference_version``, ``code_version``, ``selection`` (dict
        or None), ``seed``, ``trajectory``, ``time_fs``, ``created`` (UTC, ISO 8601).
        ``max_iteration=k`` selects the frames of iterations 0..k.
        """
        where, params = self._where(split, iteration, origin, max_iteration)
        cursor = self._db.execute(f"SELECT * FROM frames{where} ORDER BY id", params)
        return [self._atoms(cursor.description, row, labelled=True) for row in cursor]

    def get(self, frame_id: int) -> Atoms:
        """The labelled frame with this id (see :meth:`frames`)."""
        cursor = self._db.execute("SELECT * FROM frames WHERE id = ?", (int(frame_id),))
        row = cursor.fetchone()
        if row is None:
            raise DatasetError(f"{self.path} has no frame with id {frame_id}")
        return self._atoms(cursor.description, row, labelled=True)

    def quarantined(self, iteration: int | None = None) -> list[Atoms]:
        """Quarantined candidates, without labels; ``.info`` holds provenance and ``error``."""
        where, params = self._where(None, iteration, None, labelled=False)
        cursor = self._db.execute(f"SELECT * FROM quarantine{where} ORDER BY id", params)
        return [self._atoms(cursor.description, row, labelled=False) for row in cursor]

    def _atoms(self, description: Any, values: tuple, labelled: bool) -> Atoms:
        row = dict(zip([d[0] for d in description], values, strict=True))
        n = row["n_atoms"]
        where = f"{self.path}: {'frame' if labelled else 'quarantined frame'} {row['id']}"
        if labelled and row.get("checksum") is not None and _checksum(row) != row["checksum"]:
            raise DatasetError(
                f"{where} is corrupt: its structure or labels no longer match the checksum "
                "stored with them; restore the file from a backup, or delete that row "
                f"(DELETE FROM frames WHERE id = {row['id']}) and rerun to label it again"
            )
        try:
            structure = _frame.Structure(
                numbers=np.frombuffer(row["numbers"], dtype="<i8").astype(np.int64),
                positions=np.frombuffer(row["positions"], dtype="<f8").reshape(n, 3).copy(),
                cell=np.frombuffer(row["cell"], dtype="<f8").reshape(3, 3).copy(),
                pbc=np.array([c == "T" for c in row["pbc"]]),
            )
            labels = None
            if labelled:
                stress = row["stress"]
                labels = _frame.Labels(
                    energy_eV=row["energy_eV"],
                    forces=np.frombuffer(row["forces"], dtype="<f8").reshape(n, 3).copy(),
                    stress=None if stress is None else np.frombuffer(stress, dtype="<f8").copy(),
                )
        except (ValueError, TypeError) as exc:
            raise DatasetError(
                f"{where} is corrupt ({exc}); restore the file from a backup"
            ) from exc
        info: dict[str, Any] = {
            "frame_id" if labelled else "quarantine_id": row["id"],
            "content_hash": row["hash"],
        }
        if labelled:
            info["split"] = row["split"]
        else:
            info["error"] = row["error"]
        for key in _PROVENANCE_KEYS:
            info[key] = row[key]
        info["reference"] = json.loads(row["reference"])
        info["selection"] = None if row["selection"] is None else json.loads(row["selection"])
        return _frame.make_atoms(structure, labels, info)
