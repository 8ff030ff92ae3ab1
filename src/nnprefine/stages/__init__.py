"""The workflow layer: one module per stage of the main job, in run order.

=================  ===========================================================
``project``        the output directory: layout, log, seeds, records, task logs
``initial_data``   ``init``: lattice constants, prepared slabs, initial data
``training``       ``train``: committees on the store's frames; the final model
``refinement``     ``refine``: train → explore → select → label, repeated
``production``     ``sputter``: impact campaigns with the final model
``transfer``       ``sputter``, part two: the first-surface model on the final one's seeds
``repair``         ``sputter``, part three: flagged frames labelled, model retrained, re-runs
``report``         ``report``: summary.json, figures, report.html
=================  ===========================================================

Each stage takes a :class:`~nnprefine.stages.project.Project`, unpacks its config once
and calls the library (:mod:`nnprefine.trajectories`, :mod:`nnprefine.training`,
:mod:`nnprefine.selection`, :mod:`nnprefine.sputter`, …) with explicit arguments. The
library never imports this package. :mod:`nnprefine.pipeline` runs the stages in order.
"""

from nnprefine.stages.initial_data import init, initial_data, lattice, prepared_slab
from nnprefine.stages.production import sputter
from nnprefine.stages.project import Project
from nnprefine.stages.refinement import refine, refine_iteration
from nnprefine.stages.repair import repair
from nnprefine.stages.report import report
from nnprefine.stages.training import train_committee, train_final
from nnprefine.stages.transfer import transfer

__all__ = [
    "Project",
    "init",
    "initial_data",
    "lattice",
    "prepared_slab",
    "refine",
    "refine_iteration",
    "repair",
    "report",
    "sputter",
    "train_committee",
    "train_final",
    "transfer",
]
