"""Stage ``train``: committees trained on the store's frames, and the final model's checks.

- :func:`train_committee` trains (or, when already trained, loads) the committee
  ``models/<name>`` on the frames of iterations ≤ ``max_iteration``; refinement calls it
  once per iteration.
- :func:`train_final` trains the final committee on all data and compares it with the
  reference: parity data, hcp lattice constants, slab energy per atom.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from nnprefine.reference import cached_reference
from nnprefine.stages.initial_data import lattice, prepared_slab
from nnprefine.stages.project import Project

__all__ = ["new_committee", "train_committee", "train_final"]


def new_committee(project: Project) -> Any:
    """An untrained committee of the config's descriptor and networks; with
    ``network.initial_model``, member 1 is that model (marked as trained, so training
    keeps its scaling and offsets) and the others fresh networks of its architecture."""
    from nnprefine.model import Committee, NNPotential

    cfg = project.config
    net = cfg.network
    seed = project.seed("committee")
    path = cfg.initial_model_path()
    if path is None:
        return Committee.create(
            cfg.descriptor.symmetry_functions(cfg.elements),
            n_members=net.committee_size,
            hidden=net.hidden,
            activation=net.activation,
            seed=seed,
            baseline=net.baseline(),
        )
    from nnprefine.n2p2 import read_model

    start = read_model(path, baseline=net.baseline())
    start.metadata.setdefault("training", {})["initial_model"] = str(path)
    fresh = [
        NNPotential(
            start.sfset,
            start.hidden,
            start.activation,
            seed + m,
            baseline=start.baseline,
            skin_A=start.skin_A,
        )
        for m in range(1, net.committee_size)
    ]
    return Committee([start, *fresh])


def train_committee(
    project: Project,
    name: str,
    max_iteration: int | None = None,
    warm_start_from: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train the committee ``models/<name>`` on the store's frames (of iterations ≤ max_iteration).

    ``warm_start_from`` names a trained committee to continue from (when
    ``training.warm_start`` allows it and it exists). Returns the committee and its record
    (RMSE per member, frames, seconds). When the model directory and its record exist,
    they are loaded instead (resume).
    """
    from nnprefine.model import Committee
    from nnprefine.training import rmse, train

    cfg = project.config
    directory = project.model_dir(name)
    rec = project.stage_record(f"train-{name}")
    if rec is not None and directory.exists():
        return Committee.load(directory), rec
    with project.store() as store:
        train_frames = store.frames(split="train", max_iteration=max_iteration)
        test_frames = store.frames(split="test", max_iteration=max_iteration)
    warm = (
        cfg.training.warm_start
        and warm_start_from is not None
        and project.model_dir(warm_start_from).exists()
    )
    committee = (
        Committee.load(project.model_dir(warm_start_from)) if warm else new_committee(project)
    )
    # a committee started from network.initial_model continues its member 1
    settings = dataclasses.replace(
        cfg.training.settings,
        seed=project.seed("train", name),
        warm_start=warm or cfg.network.initial_model is not None,
    )
    project.say(
        f"training committee '{name}': {len(train_frames)} train / {len(test_frames)} test frames"
    )
    t0 = time.perf_counter()
    train(committee, train_frames, test_frames, settings, log_dir=project.dir / "training" / name)
    seconds = time.perf_counter() - t0
    train_err = rmse(committee, train_frames)
    test_err = (
        rmse(committee, test_frames)
        if test_frames
        else {"energy_meV_per_atom": [math.nan], "force_meV_per_A": [math.nan]}
    )
    committee.save(directory)
    rec = {
        "name": name,
        "train_frames": len(train_frames),
        "test_frames": len(test_frames),
        "seconds": seconds,
        "train_rmse_energy_mev_per_atom": train_err["energy_meV_per_atom"],
        "train_rmse_force_mev_per_A": train_err["force_meV_per_A"],
        "test_rmse_energy_mev_per_atom": test_err["energy_meV_per_atom"],
        "test_rmse_force_mev_per_A": test_err["force_meV_per_A"],
    }
    project.record_stage(f"train-{name}", rec)
    project.say(
        f"  trained in {seconds:.0f} s; member 1 test RMSE "
        f"{rec['test_rmse_energy_mev_per_atom'][0]:.2f} meV/atom, "
        f"{rec['test_rmse_force_mev_per_A'][0]:.0f} meV/Å"
    )
    return committee, rec


def _parity(member: Any, frames: list[Any]) -> dict[str, np.ndarray]:
    """Reference and model energies per atom (eV) and force components (eV/Å) of ``frames``."""
    e_ref, e_nnp, f_ref, f_nnp = [], [], [], []
    for atoms in frames:
        n = len(atoms)
        e_ref.append(atoms.get_potential_energy() / n)
        f_ref.append(atoms.get_forces().ravel())
        e, f = member.energy_forces(atoms)
        e_nnp.append(e / n)
        f_nnp.append(np.asarray(f).ravel())
    return {
        "energy_ref": np.array(e_ref),
        "energy_nnp": np.array(e_nnp),
        "force_ref": np.concatenate(f_ref) if f_ref else np.zeros(0),
        "force_nnp": np.concatenate(f_nnp) if f_nnp else np.zeros(0),
    }


def train_final(project: Project) -> dict[str, Any]:
    """Train the final committee on all data; parity data, lattice and slab energy vs reference."""
    rec = project.stage_record("final_model")
    if rec is not None:
        return rec
    from nnprefine.calculators import NNPCalculator
    from nnprefine.structures import relax_bulk

    cfg = project.config
    refine_rec = project.stage_record("refine")
    k = len(refine_rec["iterations"]) if refine_rec else 0
    committee, train_rec = train_committee(
        project, "final", warm_start_from=f"iter-{k:03d}" if k else None
    )
    member = committee.members[0]
    with project.store() as store:
        parity = {split: _parity(member, store.frames(split=split)) for split in ("train", "test")}
    np.savez_compressed(
        project.model_dir("final") / "parity.npz",
        **{f"{s}_{key}": v for s, d in parity.items() for key, v in d.items()},
    )
    ref_lat = lattice(project)
    nnp_lat = relax_bulk(
        NNPCalculator(member),
        element=cfg.project.element,
        crystal=cfg.structures.crystal,
        a_A=ref_lat["a_A"],
        c_A=ref_lat["c_A"],
    )
    slab = prepared_slab(project, cfg.initial_data.slab)
    if "reference_energy_eV" in slab.info:
        slab_ref = slab.info["reference_energy_eV"] / len(slab)
    else:  # a slab prepared by an older version
        slab.calc = cached_reference(cfg.reference.spec())
        slab_ref = slab.get_potential_energy() / len(slab)
    slab.calc = NNPCalculator(member)
    slab_nnp = slab.get_potential_energy() / len(slab)
    rec = {
        **train_rec,
        "lattice": {
            "crystal": cfg.structures.crystal,  # c = a for bcc and fcc
            "model": {
                "a": nnp_lat["a_A"],
                "c": nnp_lat["c_A"],
                "energy_eV_per_atom": nnp_lat["energy_eV_per_atom"],
                "slab_energy_eV_per_atom": slab_nnp,
            },
            "reference": {
                "a": ref_lat["a_A"],
                "c": ref_lat["c_A"],
                "energy_eV_per_atom": ref_lat["energy_eV_per_atom"],
                "slab_energy_eV_per_atom": slab_ref,
            },
        },
    }
    project.say(
        f"final model: a = {nnp_lat['a_A']:.4f} Å (reference {ref_lat['a_A']:.4f}), "
        f"c = {nnp_lat['c_A']:.4f} Å (reference {ref_lat['c_A']:.4f})"
    )
    from nnprefine.stages.validation import (
        say_validation,
        validate,
        validation_data,
        validation_set_is_empty,
    )

    # scored before the record is written: a crash here re-runs the scoring on resume
    if validation_set_is_empty(project):
        project.say("final model: not validated ([validation] asks for no frames)")
    else:
        validation_data(project)
        say_validation(project, validate(project, "final", committee, rec["lattice"]))
    project.record_stage("final_model", rec)
    return rec
