"""The ``nnprefine`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from nnprefine import __version__
from nnprefine.errors import NnprefineError

__all__ = ["main"]


def _cmd_check_reference(args: argparse.Namespace) -> int:
    """Relax hcp bulk and a Be(0001) slab with the reference and print what it gives."""
    from nnprefine.reference import make_reference
    from nnprefine.structures import be0001_slab, relax_hcp, relax_slab

    spec = json.loads(args.reference) if args.reference else None
    t0 = time.perf_counter()
    bulk = relax_hcp(make_reference(spec))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnprefine",
        description="Train Behler–Parrinello NNPs, refine them by query-by-committee, and "
        "compute sputtering yields with them.",
    )
    parser.add_argument("--version", action="version", version=f"nnprefine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "check-reference",
        help="relax hcp Be and a Be(0001) slab with the reference and print a, c, E",
    )
    p.add_argument("--reference", help="JSON reference spec (default: the built-in SNAP)")
    p.set_defaults(func=_cmd_check_reference)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except NnprefineError as exc:
        print(f"nnprefine: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
