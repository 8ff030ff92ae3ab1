"""A real DFT reference through ASE: GPAW specs, and a wrapper that runs each label safely.

Two things live here:

* :func:`gpaw_spec` builds reference specs (the ``{"calculator": ..., "kwargs": ...}``
  tables of :func:`nnprefine.reference.make_reference`) for a PBE plane-wave GPAW
  calculation of Be: ``quality="paper"`` for production labels, ``quality="fast"`` for
  tests. k-point meshes come from a density in Å⁻¹, so bulk cells and slabs of any size
  get consistent sampling.
* :class:`ScratchDirCalculator` wraps *any* ASE calculator named by a spec. Each label
  runs in its own scratch folder (removed after success, kept after a failure with the
  input frame and the traceback), is timed, runs with a fixed number of BLAS/OpenMP
  threads so it does not fight the executor's workers, and turns every failure — an
  exception of the code (GPAW's ``KohnShamConvergenceError`` when the SCF loop does not
  converge), NaN or inf in the results — into
  :class:`~nnprefine.errors.ReferenceCalculationError`, which the caller quarantines.

Install the DFT code with the ``dft`` extra; ``docs/dft.md`` has the recipe.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from nnprefine.errors import ConfigError, ReferenceCalculationError
from nnprefine.reference import import_calculator, make_reference, reference_spec

__all__ = [
    "GPAW_QUALITIES",
    "ScratchDirCalculator",
    "gpaw_kwargs",
    "gpaw_spec",
    "limit_threads",
    "SCRATCH_PLACEHOLDER",
]

log = logging.getLogger(__name__)

#: In the inner spec's string kwargs, this text is replaced by the per-label folder.
SCRATCH_PLACEHOLDER = "{scratch}"

#: Environment variables that set thread counts of BLAS/OpenMP libraries and MPI codes.
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# The two GPAW settings. Physics shared by both: PBE, spin-unpolarised, plane waves,
# Fermi–Dirac smearing, Γ-centred Monkhorst–Pack meshes from a k-point density.
#   ecut_eV: plane-wave cutoff (eV); kpoint_density_per_A: k-points per Å⁻¹ of reciprocal
#   length (ASE's convention, n_i = ceil(density · |b_i|), |b_i| = 2π/d_i); width_eV:
#   Fermi–Dirac width (eV); convergence: GPAW's SCF criteria, energy in eV per valence
#   electron, density in electrons per valence electron, eigenstates in eV² per electron,
#   forces in eV/Å (largest change of an atom's force between iterations).
GPAW_QUALITIES: dict[str, dict[str, Any]] = {
    # Production labels. Measured on hcp Be (a = 2.29, c = 3.58 Å): 450 → 700 eV changes
    # the energy by 3.4 meV/atom, density 3.5 → 5 Å⁻¹ by 2.2 meV/atom; the 96-atom
    # Be(0001) slab gets a 3×3×1 mesh.
    "paper": {
        "ecut_eV": 500.0,
        "kpoint_density_per_A": 3.5,
        "width_eV": 0.1,
        "convergence": {"energy": 1e-6, "density": 1e-5, "eigenstates": 1e-8, "forces": 1e-3},
        "maxiter": 300,
    },
    # For tests and demos only: a low cutoff and a coarse mesh (the 96-atom slab is
    # Γ-only, an 8-atom hcp cell 2×2×2). The SCF criteria stay tight, so forces still
    # equal −dE/dx to ~1e-3 eV/Å (see tests/test_dft.py).
    "fast": {
        "ecut_eV": 250.0,
        "kpoint_density_per_A": 1.0,
        "width_eV": 0.1,
        "convergence": {"energy": 1e-7, "density": 1e-6, "eigenstates": 1e-10, "forces": 1e-4},
        "maxiter": 200,
    },
}


def gpaw_kwargs(
    quality: Literal["fast", "paper"] = "paper",
    *,
    kpoint_density_per_A: float | None = None,
    ecut_eV: float | None = None,
    width_eV: float | None = None,
    maxiter: int | None = None,
    txt: str | None = f"{SCRATCH_PLACEHOLDER}/gpaw.txt",
) -> dict[str, Any]:
    """Keyword arguments of ``gpaw.GPAW`` for a PBE plane-wave Be calculation (plain data).

    ``quality`` picks the defaults of :data:`GPAW_QUALITIES`; any keyword given overrides
    its value. ``txt`` is GPAW's log file; the default puts it in the per-label scratch
    folder of :class:`ScratchDirCalculator`. The result holds only numbers, strings,
    lists and tables, so it can be written to a TOML config or stored with every label.
    """
    if quality not in GPAW_QUALITIES:
        raise ConfigError(
            f"unknown GPAW quality {quality!r}; choose one of {sorted(GPAW_QUALITIES)}"
        )
    q = GPAW_QUALITIES[quality]
    density = q["kpoint_density_per_A"] if kpoint_density_per_A is None else kpoint_density_per_A
    ecut = q["ecut_eV"] if ecut_eV is None else ecut_eV
    width = q["width_eV"] if width_eV is None else width_eV
    for name, value in (("kpoint_density_per_A", density), ("ecut_eV", ecut), ("width_eV", width)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return {
        "mode": {"name": "pw", "ecut": float(ecut)},
        "xc": "PBE",
        "spinpol": False,
        "kpts": {"density": float(density), "gamma": True},
        "occupations": {"name": "fermi-dirac", "width": float(width)},
        "convergence": dict(q["convergence"]),
        "maxiter": int(q["maxiter"] if maxiter is None else maxiter),
        "txt": txt,
    }


def gpaw_spec(
    quality: Literal["fast", "paper"] = "paper",
    *,
    kpoint_density_per_A: float | None = None,
    ecut_eV: float | None = None,
    width_eV: float | None = None,
    maxiter: int | None = None,
    scratch_root: str | None = None,
    keep_scratch: bool = False,
    threads: int = 1,
) -> dict[str, Any]:
    """A reference spec for :func:`~nnprefine.reference.make_reference`: GPAW in a scratch folder.

    The spec names :class:`ScratchDirCalculator` around ``gpaw:GPAW`` with the settings of
    :func:`gpaw_kwargs`::

        >>> spec = gpaw_spec("fast")
        >>> spec["calculator"]
        'nnprefine.dft:ScratchDirCalculator'
        >>> spec["kwargs"]["inner"]["kwargs"]["xc"]
        'PBE'

    ``scratch_root``: folder for the per-label folders (default: the system's temporary
    folder, ``<tmp>/nnprefine-scratch``); ``keep_scratch``: keep them after success too;
    ``threads``: BLAS/OpenMP threads per label.
    """
    inner = {
        "calculator": "gpaw:GPAW",
        "kwargs": gpaw_kwargs(
            quality,
            kpoint_density_per_A=kpoint_density_per_A,
            ecut_eV=ecut_eV,
            width_eV=width_eV,
            maxiter=maxiter,
        ),
    }
    kwargs: dict[str, Any] = {"inner": inner, "threads": int(threads)}
    if scratch_root is not None:
        kwargs["scratch_root"] = str(scratch_root)
    if keep_scratch:
        kwargs["keep_scratch"] = True
    return {"calculator": "nnprefine.dft:ScratchDirCalculator", "kwargs": kwargs}


@contextmanager
def limit_threads(threads: int) -> Iterator[None]:
    """Run a block with ``threads`` BLAS/OpenMP threads.

    Sets the usual environment variables (read by libraries loaded later and by child
    processes such as ``mpirun cp2k``) and, when ``threadpoolctl`` is installed (it is in
    the ``dft`` extra), limits the thread pools of libraries already loaded. Restores the
    previous values afterwards. The environment is per process: run labels in separate
    worker processes, not threads, when their thread counts differ.
    """
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    saved = {var: os.environ.get(var) for var in _THREAD_VARS}
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            _warn_no_threadpoolctl()
            pools: Any = nullcontext()
        else:
            pools = threadpool_limits(limits=threads)
        with pools:
            yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


_warned_no_threadpoolctl = False


def _warn_no_threadpoolctl() -> None:
    global _warned_no_threadpoolctl
    if not _warned_no_threadpoolctl:
        _warned_no_threadpoolctl = True
        log.warning(
            "threadpoolctl is not installed, so BLAS libraries already loaded (numpy's) keep "
            "their own thread count; a DFT label can run 10x slower when those threads fight "
            "the executor's workers. Install it (pip install 'nnprefine[dft]') or start "
            "Python with OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1."
        )


def _substitute(value: Any, folder: str) -> Any:
    """``value`` with :data:`SCRATCH_PLACEHOLDER` replaced by ``folder`` in every string."""
    if isinstance(value, str):
        return value.replace(SCRATCH_PLACEHOLDER, folder)
    if isinstance(value, Mapping):
        return {k: _substitute(v, folder) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_substitute(v, folder) for v in value)
    return value


def _default_scratch_root() -> Path:
    return Path(tempfile.gettempdir()) / "nnprefine-scratch"


class ScratchDirCalculator(Calculator):
    """Any ASE calculator, run one label at a time in its own scratch folder.

    ``inner``: the spec of the calculator that does the work, as for
    :func:`~nnprefine.reference.make_reference` (``{"calculator": "gpaw:GPAW", "kwargs":
    {...}}``). A fresh inner calculator is built for every label, so nothing carries over
    from one frame to the next. In its kwargs, the text ``{scratch}`` in any string is
    replaced by the label's folder (e.g. ``txt = "{scratch}/gpaw.txt"``); a calculator
    with a ``directory`` attribute (ASE's file-based calculators: CP2K, VASP, Quantum
    ESPRESSO, ...) that is not given one gets the folder as its ``directory``.

    ``scratch_root``: where the per-label folders go (default ``<tmp>/nnprefine-scratch``).
    Each is named ``<formula>-<date>-<time>-<random>``, holds ``input.extxyz`` (the frame),
    and is deleted after a successful label unless ``keep_scratch``; after a failure it is
    kept, with ``FAILED.txt`` (the error and traceback), and the error message names it.

    ``threads``: BLAS/OpenMP threads for the label (default 1: the executor's workers are
    the parallelism). ``energy_kind``: ``"free"`` (default) reports the force-consistent
    (free) energy as ``energy``, the quantity whose negative gradient the forces are, so
    energy and force labels agree; ``"extrapolated"`` reports the inner calculator's
    ``energy`` (GPAW: extrapolated to zero smearing).

    Properties: ``energy``, ``free_energy`` (eV), ``forces`` (n_atoms, 3) eV/Å, ``stress``
    (6,) eV/Å³ when the inner calculator gives it. Extra ``results`` keys:
    ``label_wall_s`` (float, s: the label's wall time, also in :attr:`last_label_wall_s`)
    and ``energy_extrapolated`` (eV, the inner ``energy``, when it has one).

    Raises :class:`~nnprefine.errors.ReferenceCalculationError` for any failure of the
    inner calculation (SCF not converged, a crash, NaN or inf in the results).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    default_parameters: dict[str, Any] = {}

    def __init__(
        self,
        inner: Mapping[str, Any] | str,
        *,
        scratch_root: str | os.PathLike[str] | None = None,
        keep_scratch: bool = False,
        threads: int = 1,
        energy_kind: Literal["free", "extrapolated"] = "free",
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise ConfigError(
                f"ScratchDirCalculator got unknown keyword(s) {sorted(kwargs)}; allowed: "
                "inner, scratch_root, keep_scratch, threads, energy_kind (the DFT code's own "
                "settings go into inner.kwargs)"
            )
        super().__init__()
        self.inner_spec = reference_spec(inner)
        if self.inner_spec["calculator"] == "nnprefine.dft:ScratchDirCalculator":
            raise ConfigError("ScratchDirCalculator cannot wrap itself; name the DFT code in inner")
        self.scratch_root = Path(scratch_root) if scratch_root else _default_scratch_root()
        self.keep_scratch = bool(keep_scratch)
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        if energy_kind not in ("free", "extrapolated"):
            raise ConfigError(f"energy_kind must be 'free' or 'extrapolated', got {energy_kind!r}")
        self.energy_kind = energy_kind
        # A misspelt or missing code is a config error, found now rather than once per frame.
        # Import it with the thread limits, which libraries read when they are loaded.
        with limit_threads(self.threads):
            _import_factory(self.inner_spec["calculator"])
        #: Wall time of the last label (s), successful or not; None before the first.
        self.last_label_wall_s: float | None = None
        #: The folder of the last label (deleted after success unless keep_scratch).
        self.last_scratch_dir: Path | None = None
        self.converged: bool | None = None

    def __repr__(self) -> str:
        return (
            f"ScratchDirCalculator(inner={self.inner_spec['calculator']!r}, "
            f"scratch_root={str(self.scratch_root)!r}, threads={self.threads})"
        )

    def _make_folder(self, atoms: Atoms) -> Path:
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        formula = re.sub(r"[^A-Za-z0-9]", "", atoms.get_chemical_formula()) or "empty"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Path(tempfile.mkdtemp(prefix=f"{formula}-{stamp}-", dir=self.scratch_root))

    def _build_inner(self, folder: Path) -> Any:
        spec = _substitute(self.inner_spec, str(folder))
        calc = make_reference(spec)
        if hasattr(calc, "directory") and "directory" not in spec["kwargs"]:
            try:
                calc.directory = str(folder)
            except AttributeError:
                pass
        return calc

    def _run_inner(self, atoms: Atoms, folder: Path, properties: list[str]) -> dict[str, Any]:
        frame = atoms.copy()
        frame.constraints = []
        calc = self._build_inner(folder)
        frame.calc = calc
        try:
            results: dict[str, Any] = {}
            results["forces"] = np.array(frame.get_forces(), dtype=np.float64)
            results["energy_extrapolated"] = float(frame.get_potential_energy())
            try:
                free = calc.get_property("free_energy", frame)
            except Exception:  # a code without a separate free energy
                free = None
            results["free_energy"] = results["energy_extrapolated"] if free is None else float(free)
            if "stress" in properties:
                results["stress"] = np.array(frame.get_stress(), dtype=np.float64)
            return results
        finally:
            close = getattr(calc, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    pass
            frame.calc = None

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if not np.isfinite(atoms.positions).all():
            raise ReferenceCalculationError("positions contain NaN or inf; cannot evaluate")
        folder = self._make_folder(atoms)
        self.last_scratch_dir = folder
        self.converged = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ASE skips info values it cannot write
                atoms.write(folder / "input.extxyz", format="extxyz")
        except Exception:  # the frame is a convenience for post-mortems only
            pass
        name = self.inner_spec["calculator"]
        t0 = time.perf_counter()
        try:
            with limit_threads(self.threads):
                raw = self._run_inner(atoms, folder, list(properties))
            _check_finite(raw, len(atoms))
        except BaseException as exc:
            wall = time.perf_counter() - t0
            self.last_label_wall_s = wall
            self.converged = False
            _write_failure(folder, exc, wall)
            if isinstance(exc, KeyboardInterrupt | SystemExit | ConfigError):
                raise  # a wrong setting is not the frame's fault: do not quarantine it
            log.warning("label with %s failed after %.1f s; scratch kept: %s", name, wall, folder)
            raise ReferenceCalculationError(_failure_message(name, exc, folder, wall)) from exc
        wall = time.perf_counter() - t0
        self.last_label_wall_s = wall
        self.converged = True
        log.info(
            "label of %s (%d atoms) with %s: %.2f s",
            atoms.get_chemical_formula(),
            len(atoms),
            name,
            wall,
        )
        energy = raw["free_energy"] if self.energy_kind == "free" else raw["energy_extrapolated"]
        self.results = {
            "energy": energy,
            "free_energy": raw["free_energy"],
            "forces": raw["forces"],
            "energy_extrapolated": raw["energy_extrapolated"],
            "label_wall_s": wall,
        }
        if "stress" in raw:
            self.results["stress"] = raw["stress"]
        if not self.keep_scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _import_factory(name: str) -> Any:
    """The class or function a ``module:attr`` calculator name points to (imported now)."""
    if name in ("builtin-snap", "snap"):
        return None
    return import_calculator(name, "inner calculator")


def _check_finite(results: Mapping[str, Any], n_atoms: int) -> None:
    forces = results["forces"]
    if forces.shape != (n_atoms, 3):
        raise ReferenceCalculationError(
            f"the reference returned forces of shape {forces.shape}, expected ({n_atoms}, 3)"
        )
    bad = [
        key
        for key in ("energy_extrapolated", "free_energy", "forces", "stress")
        if key in results and not np.isfinite(results[key]).all()
    ]
    if bad:
        raise ReferenceCalculationError(f"the reference returned NaN or inf in {', '.join(bad)}")


def _is_convergence_error(exc: BaseException) -> bool:
    return any("ConvergenceError" in cls.__name__ for cls in type(exc).__mro__)


def _failure_message(name: str, exc: BaseException, folder: Path, wall_s: float) -> str:
    if _is_convergence_error(exc):
        what = (
            f"the SCF loop of {name} did not converge ({type(exc).__name__}); the frame may be "
            "unphysical (overlapping atoms), or raise maxiter / change the mixer in the "
            "reference kwargs"
        )
    elif isinstance(exc, ReferenceCalculationError):
        what = f"{name}: {exc}"
    else:
        what = f"{name} failed with {type(exc).__name__}: {exc}"
    return f"{what} (after {wall_s:.1f} s; input, log and traceback kept in {folder})"


def _write_failure(folder: Path, exc: BaseException, wall_s: float) -> None:
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        (folder / "FAILED.txt").write_text(f"wall time: {wall_s:.3f} s\n\n{text}")
    except OSError:
        pass
