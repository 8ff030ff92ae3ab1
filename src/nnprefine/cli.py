"""The ``nnprefine`` command line."""

from __future__ import annotations

import argparse
import errno
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any

from nnprefine import __version__
from nnprefine.errors import ConfigError, NnprefineError, UnsupportedElementError

__all__ = ["main"]


def _reference_arg(text: str | None) -> dict[str, Any] | None:
    """The JSON of a ``--reference`` option, or None when it is not given."""
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--reference is not valid JSON ({exc}); give a spec such as "
            '\'{"calculator": "builtin-snap"}\''
        ) from None


def _cmd_check_reference(args: argparse.Namespace) -> int:
    """Relax hcp bulk and a Be(0001) slab with the reference and print what it gives."""
    from nnprefine.reference import make_reference
    from nnprefine.structures import be0001_slab, relax_bulk, relax_slab

    spec = _reference_arg(args.reference)
    t0 = time.perf_counter()
    bulk = relax_bulk(make_reference(spec))
    slab = be0001_slab(size=(4, 4, 6), a_A=bulk["a_A"], c_A=bulk["c_A"])
    relax_slab(slab, make_reference(spec), fmax_eV_per_A=1e-3)
    e_slab = slab.get_potential_energy() / len(slab)
    seconds = time.perf_counter() - t0
    print(
        f"hcp Be:  a = {bulk['a_A']:.4f} Å   c = {bulk['c_A']:.4f} Å   "
        f"E = {bulk['energy_eV_per_atom']:.4f} eV/atom"
    )
    print(
        f"Be(0001) 96-atom slab, relaxed: E = {e_slab:.4f} eV/atom, "
        f"surface excess {len(slab) * (e_slab - bulk['energy_eV_per_atom']):.3f} eV"
    )
    print(f"({seconds:.1f} s)")
    return 0


def _project(args: argparse.Namespace):
    from nnprefine.config import load_config
    from nnprefine.stages.project import Project

    return Project(load_config(args.config))


def _cmd_stage(args: argparse.Namespace) -> int:
    from nnprefine import pipeline

    project = _project(args)
    with project.lock(f"nnprefine {args.command} {args.config}"):
        project.save_config()
        if args.command == "run":
            pipeline.run(project)
        else:
            pipeline.run_stage(project, args.command)
            if args.command == "report":
                print(f"report: {project.dir / 'report.html'}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from nnprefine import pipeline

    project = _project(args)
    for stage, state in pipeline.status(project).items():
        print(f"{stage:>14}: {state}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from nnprefine.stages.validation import say_validation, validate

    project = _project(args)
    with project.lock(f"nnprefine validate {args.config}"):
        out = validate(project, args.model)
    say_validation(project, out)
    print(f"figures: {project.model_dir(args.model) / 'validation.json'}")
    return 0 if out["verdict"]["ok"] else 3


def _cmd_export(args: argparse.Namespace) -> int:
    from nnprefine.model import Committee
    from nnprefine.n2p2 import write_n2p2

    project = _project(args)
    model_dir = project.model_dir(args.model)
    if not model_dir.exists():
        raise NnprefineError(
            f"no model '{args.model}' in {project.dir / 'models'}; run 'nnprefine train' first"
        )
    committee = Committee.load(model_dir)
    if not 0 <= args.member < len(committee.members):
        raise ConfigError(
            f"--member {args.member}: '{args.model}' has members 0 … {len(committee.members) - 1}"
        )
    out = args.output or str(project.dir / "n2p2" / args.model)
    write_n2p2(committee.members[args.member], out)
    print(f"n2p2 files of member index {args.member} of '{args.model}' written to {out}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from nnprefine.stages.imports import import_frames

    project = _project(args)
    reference = _reference_arg(args.reference)
    with project.lock(f"nnprefine import {args.config}"):
        report = import_frames(
            project,
            args.files,
            origin=args.origin,
            fmt=args.format,
            length_unit_A=args.length_unit_A,
            energy_unit_eV=args.energy_unit_eV,
            reference=reference,
        )
    for line in report.rejected:
        print(f"  not stored: {line}", file=sys.stderr)
    print(
        f"{report.stored} frames stored in {project.data_db} (origin '{args.origin}'), "
        f"{report.duplicates} already there, {len(report.rejected)} rejected"
    )
    return 1 if report.rejected and not (report.stored or report.duplicates) else 0


_STAGE_HELP = {
    "run": "run every stage in order (resumes where a previous run stopped)",
    "init": "relax the lattice and the slabs; label the initial data and the validation set",
    "refine": "the query-by-committee loop: train, explore, select, label, repeat",
    "train": "train the final committee on all data; parity, lattice constants",
    "sputter": "production impacts with the final model (and reference checks); yields; "
    "with refine_on_flags, the repair of flagged trajectories",
    "report": "write report.html, summary.json and the figures",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnprefine",
        description="Train Behler–Parrinello NNPs, refine them by query-by-committee, and "
        "compute sputtering yields with them. Every command takes the project's TOML "
        "config; results go to its [project] output_dir. See examples/ for configs.",
    )
    parser.add_argument("--version", action="version", version=f"nnprefine {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in _STAGE_HELP.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", help="project config (TOML), e.g. examples/be0001-quick.toml")
        p.set_defaults(func=_cmd_stage)
    p = sub.add_parser("status", help="what is done and what remains")
    p.add_argument("config")
    p.set_defaults(func=_cmd_status)
    p = sub.add_parser(
        "validate",
        help="score a model of the project on its validation set (exit code 3: targets missed)",
    )
    p.add_argument("config")
    p.add_argument("--model", default="final", help="model name under models/ (default: final)")
    p.set_defaults(func=_cmd_validate)
    p = sub.add_parser("export-n2p2", help="write a trained model as n2p2 files")
    p.add_argument("config")
    p.add_argument("--model", default="final", help="model name under models/ (default: final)")
    p.add_argument(
        "--member",
        type=int,
        default=0,
        help="committee member index, from 0 = NNP1, the member that drives MD (default: 0)",
    )
    p.add_argument("--output", help="output folder (default: <output_dir>/n2p2/<model>)")
    p.set_defaults(func=_cmd_export)
    from nnprefine.stages.imports import FORMATS

    p = sub.add_parser(
        "import",
        help="store labelled frames you already have (extxyz, n2p2 input.data, ASE db) in "
        "the project's data.db",
    )
    p.add_argument("config")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--origin", default="import", help="origin recorded with the frames")
    p.add_argument("--format", choices=FORMATS, default="auto", help="default: from the name")
    p.add_argument(
        "--energy-unit-eV", type=float, default=1.0, help="eV per energy unit of the files"
    )
    p.add_argument("--length-unit-A", type=float, default=1.0, help="Å per length unit")
    p.add_argument(
        "--reference",
        help="JSON spec of the method that labelled them (default: the config's [reference])",
    )
    p.set_defaults(func=_cmd_import)
    p = sub.add_parser(
        "check-reference",
        help="relax hcp Be and a Be(0001) slab with the reference and print a, c, E",
    )
    p.add_argument("--reference", help="JSON reference spec (default: the built-in SNAP)")
    p.set_defaults(func=_cmd_check_reference)
    return parser


#: exit codes: 0 done, 1 a failure, 2 a user error (config, arguments, input), 3 targets
#: missed (``validate``), 130 interrupted
EXIT_FAILURE, EXIT_USER_ERROR, EXIT_INTERRUPTED = 1, 2, 130


def _one_line(exc: BaseException) -> tuple[str, int]:
    """The message and exit code for an exception that ends a command."""
    if isinstance(exc, ConfigError | UnsupportedElementError):
        return f"error: {exc}", EXIT_USER_ERROR
    if isinstance(exc, NnprefineError):
        return f"error: {exc}", EXIT_FAILURE
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            hint = "free some space and rerun the same command: the project resumes"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "make the folder writable or set [project] output_dir to a writable one"
        else:
            hint = "check the path; the project resumes when rerun"
        return f"error: {exc.strerror or exc}{where}; {hint}", EXIT_FAILURE
    if isinstance(exc, sqlite3.DatabaseError):
        return (
            f"error: a database of the project is damaged or not SQLite ({exc}); move the "
            "named file aside and rerun 'nnprefine run' to rebuild what it held",
            EXIT_FAILURE,
        )
    return (
        f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback "
        "and report it)",
        EXIT_FAILURE,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; failures become one line on stderr (a traceback with --debug)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("nnprefine: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        message, code = _one_line(exc)
        print(f"nnprefine: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
