"""Training on SNAP labels of small rattled Be cells: loss goes down, RMSE reached, resume."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from nnprefine._kalman import GlobalKalmanFilter
from nnprefine.descriptors import make_set
from nnprefine.errors import ConfigError, DatasetError, ModelError
from nnprefine.model import Committee, NNPotential
from nnprefine.training import (
    TrainingSettings,
    _DescriptorForces,
    _JacobianBudget,
    _learning_rate,
    _over_threshold,
    _prepare,
    _prepare_sets,
    _set_offsets,
    _test_set_selects,
    _TorchModel,
    rmse,
    split_frames,
    train,
)


@pytest.fixture(scope="module")
def sfset():
    return make_set(["Be"], n_radial=5, n_narrow=2, n_wide=2, r_cut_A=4.5)


@pytest.fixture(scope="module")
def frames():
    """14 rattled, strained 16-atom hcp Be cells labelled by the built-in SNAP reference."""
    from nnprefine.reference import SnapReference

    calc = SnapReference()
    rng = np.random.default_rng(7)
    out = []
    for k in range(14):
        atoms = bulk("Be", "hcp", a=2.24 * (1 + 0.02 * rng.normal()), c=3.60).repeat((2, 2, 2))
        atoms.rattle(0.06, seed=k)
        atoms.calc = calc
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        atoms.info["split"] = "test" if k >= 11 else "train"
        out.append(atoms)
    return out


def _quick(**kw) -> TrainingSettings:
    base = dict(
        optimizer="adam",
        epochs=12,
        batch_size_frames=2,
        learning_rate=1e-2,
        quiet=True,
        seed=1,
        energy_weight=1.0,
        force_weight=1.0,
        learning_rate_decay_per_epoch=0.9,
    )
    base.update(kw)
    return TrainingSettings(**base)


def test_adam_training_fits_snap_labels(sfset, frames, tmp_path):
    train_set, test_set = split_frames(frames)
    assert len(train_set) == 11 and len(test_set) == 3
    pot = NNPotential(sfset, hidden=(8, 8), seed=0)
    hist = train(pot, train_set, test_set, _quick(), log_dir=tmp_path / "log")
    first, best = hist.rows[0], min(hist.rows, key=lambda r: r["test_loss"])
    assert best["test_loss"] < 0.5 * first["test_loss"]
    # 3 test frames are too few to pick weights on: the model keeps the last ones, and says so
    assert "keeping the last weights" in (tmp_path / "log" / "training.log").read_text()
    best = hist.rows[-1]
    # the scaling came from the training set and the offset sits near SNAP's −3.28 eV/atom
    assert pot.scaling.mode == "scalecenter"
    assert pot.energy_offsets_eV["Be"] == pytest.approx(-3.28, abs=0.1)
    # the model holds its best-on-test weights; stated accuracy on held-out frames
    held_out = rmse(pot, test_set)
    assert held_out["energy_meV_per_atom"] == pytest.approx(
        best["test_rmse_energy_meV_per_atom"], rel=1e-6
    )
    assert held_out["energy_meV_per_atom"] < 10.0
    assert held_out["force_meV_per_A"] < 400.0
    with open(tmp_path / "log" / "member_000" / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(hist.rows) and "test_rmse_force_meV_per_A" in rows[0]
    assert pot.metadata["training"]["best_epoch"] == hist.best_epoch


def test_resume_continues_and_rejects_changed_settings(sfset, frames, tmp_path):
    train_set, test_set = split_frames(frames)
    log = tmp_path / "log"
    a = NNPotential(sfset, hidden=(6,), seed=2)
    train(a, train_set, test_set, _quick(epochs=3), log_dir=log)
    b = NNPotential(sfset, hidden=(6,), seed=2)
    hist = train(b, train_set, test_set, _quick(epochs=5), log_dir=log)
    assert [r["epoch"] for r in hist.rows] == [0, 1, 2, 3, 4]
    # the same run without interruption gives the same numbers
    c = NNPotential(sfset, hidden=(6,), seed=2)
    straight = train(c, train_set, test_set, _quick(epochs=5))
    np.testing.assert_allclose(
        [r["test_loss"] for r in hist.rows], [r["test_loss"] for r in straight.rows], rtol=1e-8
    )
    with pytest.raises(ConfigError, match="learning_rate"):
        train(
            NNPotential(sfset, hidden=(6,), seed=2),
            train_set,
            test_set,
            _quick(epochs=6, learning_rate=0.5),
            log_dir=log,
        )


def test_kalman_training_lowers_the_error(sfset, frames):
    train_set, test_set = split_frames(frames)
    pot = NNPotential(sfset, hidden=(6,), seed=3)
    hist = train(
        pot, train_set, test_set, _quick(optimizer="kalman", epochs=4, kalman_force_fraction=0.05)
    )
    losses = [r["test_loss"] for r in hist.rows]
    assert min(losses[1:]) < 0.5 * losses[0]
    assert rmse(pot, test_set)["energy_meV_per_atom"] < 15.0


def test_committee_training_keeps_members_different(sfset, frames):
    train_set, test_set = split_frames(frames)
    com = Committee.create(sfset, n_members=2, hidden=(6,), seed=5)
    hists = train(com, train_set, test_set, _quick(epochs=3))
    assert len(hists) == 2
    res = com.evaluate(test_set[0])
    assert res.metrics.force_disagreement_eV_per_A > 0.0
    assert com[0].scaling.to_dict() == com[1].scaling.to_dict()


def test_members_trained_in_worker_processes_match_members_trained_in_turn(sfset, frames, tmp_path):
    """parallel_members = 2 trains member 2 in a spawned process on its own descriptor
    cache: the same data, seeds and schedule as one after another, so the same weights
    (to the round-off of another thread count) and the same history; its log is written."""
    train_set, test_set = split_frames(frames)
    runs = {}
    for n in (1, 2):
        com = Committee.create(sfset, n_members=2, hidden=(6,), seed=5)
        settings = _quick(epochs=3, optimizer="kalman", parallel_members=n)
        hists = train(com, train_set, test_set, settings, log_dir=tmp_path / f"p{n}")
        runs[n] = (com, hists)
    (seq, h_seq), (par, h_par) = runs[1], runs[2]
    w_seq, w_par = seq[1].weight_arrays(), par[1].weight_arrays()
    assert w_seq.keys() == w_par.keys()
    for key in w_seq:
        np.testing.assert_allclose(w_par[key], w_seq[key], rtol=1e-6, atol=1e-9)
    assert [r["epoch"] for r in h_par[1].rows] == [r["epoch"] for r in h_seq[1].rows]
    assert h_par[1].rows[-1]["test_rmse_force_meV_per_A"] == pytest.approx(
        h_seq[1].rows[-1]["test_rmse_force_meV_per_A"], rel=1e-5
    )
    meta_seq, meta_par = seq[1].metadata["training"], par[1].metadata["training"]
    assert meta_par["distinct_frames"] == meta_seq["distinct_frames"]
    assert len(meta_par["log"]) == len(meta_seq["log"]) == 3
    assert (tmp_path / "p2" / "member_001").is_dir()
    assert "member 2 trained in a worker process" in (tmp_path / "p2" / "training.log").read_text()
    assert "worker" not in (tmp_path / "p1" / "training.log").read_text()
    with pytest.raises(ConfigError, match="parallel_members"):
        _quick(parallel_members=-1)


def test_force_function_backward_is_transpose_of_forward(sfset, frames):
    """⟨F(g), v⟩ = −⟨g, J v⟩: the JVP is the adjoint of the force pass (torch gradcheck)."""
    pot = NNPotential(sfset, hidden=(4,), seed=0)
    (frame,) = _prepare(frames[:1], pot, cache_limit_mib=1.0)
    g = torch.from_numpy(np.random.default_rng(0).normal(size=frame.values.shape)).requires_grad_(
        True
    )
    assert torch.autograd.gradcheck(
        lambda x: _DescriptorForces.apply(x, frame, pot.descriptor), (g,), eps=1e-6, atol=1e-7
    )


def test_split_frames_uses_info_or_a_stable_hash(frames):
    plain = [f.copy() for f in frames]
    for f in plain:
        f.info.pop("split", None)
    tr1, te1 = split_frames(plain, test_fraction=0.3)
    tr2, te2 = split_frames(list(reversed(plain)), test_fraction=0.3)
    key = {id(f): k for k, f in enumerate(plain)}
    assert sorted(key[id(f)] for f in te1) == sorted(key[id(f)] for f in te2)
    assert len(tr1) + len(te1) == len(frames)
    bad = frames[0].copy()
    bad.info["split"] = "validation"
    with pytest.raises(DatasetError, match="split"):
        split_frames([bad])


def test_unlabelled_frames_are_rejected(sfset, frames):
    atoms = frames[0].copy()
    atoms.calc = None
    with pytest.raises(DatasetError, match="no labels"):
        train(NNPotential(sfset, hidden=(4,)), [atoms], [], _quick(epochs=1))


def test_warm_start_keeps_scaling_offsets_and_the_fit(sfset, frames):
    """Continuing a trained model on more data starts from where it was, not from a shift."""
    train_set, test_set = frames[:6], frames[11:]
    pot = NNPotential(sfset, hidden=(6,), seed=4)
    train(pot, train_set, test_set, _quick(epochs=8))
    before = rmse(pot, test_set)
    scaling, offsets = pot.scaling.to_dict(), dict(pot.energy_offsets_eV)
    # One epoch at a tiny learning rate on the larger set barely moves the weights, so
    # the warm-started model must predict as before; a refit of scaling would not.
    cont = _quick(epochs=1, learning_rate=1e-12, learning_rate_min=0.0, warm_start=True)
    train(pot, frames[:11], test_set, cont)
    assert pot.scaling.to_dict() == scaling and pot.energy_offsets_eV == offsets
    after = rmse(pot, test_set)
    assert after["energy_meV_per_atom"] == pytest.approx(before["energy_meV_per_atom"], rel=1e-3)
    cold = pot.copy()
    train(cold, frames[:11], test_set, _quick(epochs=1, learning_rate=1e-12, learning_rate_min=0.0))
    assert cold.scaling.to_dict() != scaling  # without warm_start the inputs are refitted


def test_a_diverging_kalman_filter_says_why(sfset, frames):
    # P0 = I / epsilon: with epsilon = 1e-300 the first update overflows to inf, then NaN
    # (1e-30 only overshot, and whether that reached NaN depended on rounding).
    train_set, test_set = split_frames(frames)
    pot = NNPotential(sfset, hidden=(6,), seed=3)
    settings = _quick(
        optimizer="kalman",
        kalman_type="fading",
        epochs=4,
        kalman_epsilon=1e-300,
        kalman_force_fraction=0.05,
    )
    with pytest.raises(ModelError, match="diverged in epoch .* kalman_epsilon near"):
        train(pot, train_set, test_set, settings)


def _loss_and_grads(pot, frames):
    """Force + energy loss of ``frames`` and its gradient in the weights (flat)."""
    _set_offsets(frames, pot)
    tm = _TorchModel(pot)
    energies, forces = tm.forward(frames, True)
    ref_f = torch.from_numpy(np.concatenate([f.forces_eV_per_A for f in frames]))
    ref_e = torch.tensor([f.energy_eV for f in frames], dtype=torch.float64)
    loss = ((energies - ref_e) ** 2).mean() + ((torch.cat(forces) - ref_f) ** 2).mean()
    return torch.cat(forces).detach(), tm.flat_grad(loss, retain_graph=False)


@pytest.mark.parametrize("layout", ["dense", "pairs"])
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_cached_and_on_the_fly_paths_give_the_same_forces_and_loss_gradient(
    sfset, frames, dtype, rtol, layout
):
    pot = NNPotential(sfset, hidden=(5, 4), seed=9)
    budget = _JacobianBudget(2**30, dtype, layout)
    cached = _prepare(frames[:3], pot, 1.0, budget)
    fly = _prepare(frames[:3], pot, 1.0)
    assert budget.cached == 3 and all(f.jacobian is not None for f in cached)
    assert all((f.jacobian.matrix is not None) == (layout == "dense") for f in cached)
    assert all(f.jacobian is None for f in fly)
    f_c, g_c = _loss_and_grads(pot, cached)
    f_f, g_f = _loss_and_grads(pot, fly)
    assert torch.abs(f_f).max() > 1e-2  # a real test: the forces are not trivially zero
    torch.testing.assert_close(f_c, f_f, rtol=rtol, atol=rtol * float(torch.abs(f_f).max()))
    torch.testing.assert_close(g_c, g_f, rtol=rtol, atol=rtol * float(torch.abs(g_f).max()))


def test_the_jacobian_budget_is_respected_and_training_continues_on_the_fly(
    sfset, frames, tmp_path
):
    pot = NNPotential(sfset, hidden=(6,), seed=2)
    one = _prepare(frames[:1], pot, 1.0, _JacobianBudget(2**30))[0].jacobian.nbytes
    budget = _JacobianBudget(2.5 * one)
    prepared = _prepare(frames[:5], pot, 1.0, budget)
    assert [f.jacobian is not None for f in prepared] == [True, True, False, False, False]
    assert budget.bytes_used <= 2.5 * one and (budget.cached, budget.on_the_fly) == (2, 3)
    trained = NNPotential(sfset, hidden=(6,), seed=2)
    train(trained, frames[:11], frames[11:], _quick(epochs=1))
    assert trained.metadata["training"]["jacobian_cache"]["frames"] == 14
    # a budget too small for any frame: training says so and gives the cached run's numbers
    train_set, test_set = split_frames(frames)
    small = _quick(epochs=3, jacobian_cache_GiB=1e-9, jacobian_dtype="float64")
    a = train(NNPotential(sfset, hidden=(6,), seed=2), train_set, test_set, small, tmp_path / "a")
    log = (tmp_path / "a" / "training.log").read_text()
    assert "0 frames" in log and "14 on the fly" in log and "jacobian_cache_GiB" in log
    b = train(
        NNPotential(sfset, hidden=(6,), seed=2),
        train_set,
        test_set,
        _quick(epochs=3, jacobian_dtype="float64"),
    )
    np.testing.assert_allclose(
        [r["test_loss"] for r in a.rows], [r["test_loss"] for r in b.rows], rtol=1e-8
    )


def test_resume_with_the_cache_matches_a_run_on_the_fly(sfset, frames, tmp_path):
    train_set, test_set = split_frames(frames)
    s = dict(epochs=4, jacobian_dtype="float64")
    train(
        NNPotential(sfset, hidden=(6,), seed=2),
        train_set,
        test_set,
        _quick(**{**s, "epochs": 2}),
        tmp_path,
    )
    resumed = train(
        NNPotential(sfset, hidden=(6,), seed=2), train_set, test_set, _quick(**s), tmp_path
    )
    fly = train(
        NNPotential(sfset, hidden=(6,), seed=2),
        train_set,
        test_set,
        _quick(**s, jacobian_cache_GiB=0.0),
    )
    np.testing.assert_allclose(
        [r["test_loss"] for r in resumed.rows], [r["test_loss"] for r in fly.rows], rtol=1e-8
    )


def test_one_kalman_update_reduces_the_error_of_the_component_it_used(sfset, frames):
    pot = NNPotential(sfset, hidden=(4,), seed=1)
    (frame,) = _prepare(frames[:1], pot, 1.0, _JacobianBudget(2**30, "float64"))
    _set_offsets([frame], pot)
    tm = _TorchModel(pot)
    kf = GlobalKalmanFilter(sum(p.numel() for p in tm.params), 1e-2, 1e-2, 2.3, 1e-6, 0.96, 0.9995)
    kf.start_epoch(0, 1)
    c = 7  # one force component

    def error():
        _, forces = tm.forward([frame], True)
        flat = forces[0].reshape(-1)
        return float(frame.forces_eV_per_A.reshape(-1)[c] - flat[c].item()), flat

    before, flat = error()
    h = tm.flat_grad(flat[c], retain_graph=False)[:, None]
    w = tm.flat_params()
    kf.update(w, torch.tensor([before], dtype=torch.float64), h)
    tm.set_flat_params(w)
    after, _ = error()
    assert abs(before) > 1e-3 and abs(after) < 0.5 * abs(before)


def test_error_threshold_puts_the_large_force_errors_first(sfset, frames):
    """n2p2's selection: of n × trials random candidates, those with |error| ≥ t × RMSE
    go first; with t = 0 the candidates are taken in their random order."""
    pot = NNPotential(sfset, hidden=(4,), seed=1)
    (frame,) = _prepare(frames[:1], pot, 1.0, _JacobianBudget(2**30, "float64"))
    _set_offsets([frame], pot)
    tm = _TorchModel(pot)
    _, forces = tm.forward([frame], True)
    err = np.abs(frame.forces_eV_per_A.reshape(-1) - forces[0].detach().numpy().reshape(-1))
    n = 6
    s = _quick(optimizer="kalman", kalman_force_error_threshold=1.0, kalman_threshold_trials=4)
    seen = [0.0, 0]
    comps = _over_threshold(tm, frame, n, s, np.random.default_rng(3), seen)
    cand = np.random.default_rng(3).choice(err.size, size=n * 4, replace=False)
    limit = np.sqrt((err[cand] ** 2).mean())
    assert seen[1] == n * 4 and np.isclose(seen[0], (err[cand] ** 2).sum())
    assert comps.size == n and set(comps) <= set(cand)
    assert (err[cand] >= limit).sum() >= n  # enough over the limit for the rule to bite
    assert (err[comps] >= limit).all()
    assert err[comps].mean() > 1.5 * err[cand].mean()
    with pytest.raises(ConfigError, match="kalman_force_error_threshold"):
        _quick(optimizer="kalman", kalman_force_error_threshold=-1.0)


def test_kalman_training_with_the_error_threshold_lowers_the_error(sfset, frames):
    train_set, test_set = split_frames(frames)
    pot = NNPotential(sfset, hidden=(6,), seed=3)
    s = _quick(
        optimizer="kalman", epochs=4, kalman_force_fraction=0.05, kalman_force_error_threshold=1.0
    )
    losses = [r["test_loss"] for r in train(pot, train_set, test_set, s).rows]
    assert min(losses[1:]) < 0.5 * losses[0]


@pytest.mark.parametrize("layout", ["dense", "pairs"])
def test_batched_force_components_equal_one_backward_pass_per_component(frames, layout):
    """The Kalman force update's Jacobian ∂F_c/∂w from one batched pass (sparse rows of
    ∂G/∂r, vmap through the networks) equals m separate backward passes through the
    forces, on a two-element frame (Be cell with two atoms made W) and a Be one."""
    from nnprefine.reference import SnapReference

    mixed = frames[0].copy()
    mixed.symbols[[1, 6]] = "W"
    mixed.calc = SnapReference()
    e, f = mixed.get_potential_energy(), mixed.get_forces()
    mixed.calc = SinglePointCalculator(mixed, energy=e, forces=f)
    sfset = make_set(["Be", "W"], n_radial=3, n_narrow=2, n_wide=2, r_cut_A=4.5)
    pot = NNPotential(sfset, hidden=(5, 4), seed=2)
    prepared = _prepare([mixed, frames[1]], pot, 1.0, _JacobianBudget(2**30, "float64", layout))
    tm = _TorchModel(pot)
    rng = np.random.default_rng(1)
    for frame in prepared:
        assert (frame.jacobian.matrix is not None) == (layout == "dense")
        comps = torch.from_numpy(rng.choice(3 * frame.n_atoms, size=9, replace=False))
        _, forces = tm.forward([frame], True)
        flat = forces[0].reshape(-1)
        loop = torch.stack([tm.flat_grad(flat[int(c)], retain_graph=True) for c in comps], 1)
        values, h = tm.force_components(frame, comps)
        assert float(loop.abs().max()) > 1e-3  # not trivially zero
        torch.testing.assert_close(values, flat.detach()[comps], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(h, loop, rtol=1e-10, atol=1e-12)


def test_model_selection_needs_ten_frames_and_ten_percent():
    assert _test_set_selects(90, 10) and _test_set_selects(200, 30)
    assert _test_set_selects(271, 29)  # a 10 % hash split of 300 frames
    assert not _test_set_selects(11, 3)  # the quick job's old 3-frame test set
    assert not _test_set_selects(200, 12)  # 10 frames, but 6 %
    assert not _test_set_selects(0, 9)


def test_plateau_schedule_halves_the_rate_after_a_stall_and_replays_on_resume():
    s = _quick(learning_rate_schedule="plateau", plateau_patience_epochs=2, learning_rate=1e-2)
    losses = [1.0, 0.5, 0.6, 0.7, 0.4, 0.41, 0.42, 0.43, 0.44]
    rows = [{"monitor_loss": x} for x in losses]
    lrs = [_learning_rate(s, e, rows) for e in range(len(rows) + 1)]
    # improvements at epochs 0, 1, 4; stalls of 2 after epochs 3 and 6, and again after 8
    assert lrs == pytest.approx([1e-2] * 4 + [5e-3] * 3 + [2.5e-3] * 2 + [1.25e-3])
    # the rate depends only on the logged losses before the epoch: a resumed run agrees
    assert _learning_rate(s, 7, rows[:7]) == lrs[7]
    with pytest.raises(ConfigError, match="learning_rate_schedule"):
        _quick(learning_rate_schedule="cosine")


def test_late_energy_weight_changes_training_only_after_its_start(sfset, frames):
    train_set, test_set = split_frames(frames)
    kw = dict(epochs=4, late_start_fraction=0.5)
    a = train(NNPotential(sfset, hidden=(6,), seed=2), train_set, test_set, _quick(**kw))
    b = train(
        NNPotential(sfset, hidden=(6,), seed=2),
        train_set,
        test_set,
        _quick(**kw, energy_weight_late=50.0),
    )
    la, lb = [r["test_loss"] for r in a.rows], [r["test_loss"] for r in b.rows]
    np.testing.assert_allclose(la[:2], lb[:2], rtol=1e-12)
    assert abs(la[3] - lb[3]) > 1e-6 * la[3]


def test_bootstrap_members_see_different_frames_and_member_one_sees_all():
    from nnprefine.training import member_frame_indices

    s = TrainingSettings(seed=5)
    n = 200
    first = member_frame_indices(n, 0, s)
    np.testing.assert_array_equal(first, np.arange(n))
    second, third = member_frame_indices(n, 1, s), member_frame_indices(n, 2, s)
    assert len(second) == len(third) == n
    # a bootstrap resample holds about 1 − 1/e ≈ 63 % of the frames
    for idx in (second, third):
        assert 0.55 < len(np.unique(idx)) / n < 0.71
    assert not np.array_equal(second, third)
    # reproducible from the seed, and every member the same with member_frames = "all"
    np.testing.assert_array_equal(second, member_frame_indices(n, 1, TrainingSettings(seed=5)))
    every = TrainingSettings(seed=5, member_frames="all")
    np.testing.assert_array_equal(member_frame_indices(n, 2, every), np.arange(n))
    with pytest.raises(ConfigError, match="member_frames"):
        TrainingSettings(member_frames="jackknife")


# --------------------------------------------------------------------------- stress


def _stressed_frames(n: int, seed: int = 5):
    """n rattled 16-atom hcp Be cells, isotropically strained by ±4 %, labelled by SNAP
    through ``label_frame`` (energy, forces and stress)."""
    from nnprefine.reference import label_frame

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        s = 1.0 + 0.04 * rng.uniform(-1.0, 1.0)
        atoms = bulk("Be", "hcp", a=2.24 * s, c=3.60 * s).repeat((2, 2, 2))
        atoms.rattle(0.03, seed=100 + k)
        out.append(label_frame(atoms, "builtin-snap"))
    return out


def test_labels_of_periodic_cells_carry_the_reference_stress_and_slabs_none():
    from nnprefine.reference import SnapReference, label_frame
    from nnprefine.structures import be0001_slab

    (cell,) = _stressed_frames(1)
    check = cell.copy()
    check.calc = SnapReference()
    np.testing.assert_allclose(cell.get_stress(), check.get_stress(), rtol=1e-12, atol=1e-14)
    assert np.abs(cell.get_stress()).max() > 1e-4  # strained: not trivially zero
    slab = label_frame(be0001_slab(size=(2, 2, 4), a_A=2.24, c_A=3.60, vacuum_A=5.0), "snap")
    assert "stress" not in slab.calc.results


def _strain_derivative_fd(energy_of, atoms, d: float = 1e-5) -> list[float]:
    """∂E/∂ε_c (eV) for the six Voigt strains by central differences of ``energy_of``."""
    return [
        (
            _energy_under_strain(energy_of, atoms, c, d)
            - _energy_under_strain(energy_of, atoms, c, -d)
        )
        / (2 * d)
        for c in range(6)
    ]


def _energy_under_strain(energy_of, atoms, c: int, delta: float) -> float:
    """Energy of ``atoms`` deformed by I + δ·sym(e_a e_bᵀ), (a, b) Voigt component c."""
    from nnprefine.training import _VOIGT

    a, b = _VOIGT[c]
    eps = np.zeros((3, 3))
    eps[a, b] += 0.5 * delta
    eps[b, a] += 0.5 * delta
    deformed = atoms.copy()
    deformed.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return energy_of(deformed)


@pytest.mark.parametrize("layout", ["dense", "pairs", "on the fly"])
def test_strain_rows_give_the_strain_derivative_of_the_energy(sfset, layout):
    """∂E/∂ε from the strain rows (frames in either cache layout or on the fly), and from
    the ZBL baseline's pair sum, against central differences of the energy under each of
    the six Voigt strains."""
    from nnprefine.model import ZBLBaseline

    atoms = bulk("Be", "hcp", a=2.24, c=3.60).repeat((2, 2, 2))
    atoms.rattle(0.08, seed=3)
    atoms.calc = SinglePointCalculator(
        atoms, energy=0.0, forces=np.zeros((16, 3)), stress=np.zeros(6)
    )
    pot = NNPotential(sfset, hidden=(5,), seed=4)
    budget = None if layout == "on the fly" else _JacobianBudget(2**30, "float64", layout)
    (frame,) = _prepare([atoms], pot, 1.0, budget, with_stress=True)
    assert (frame.jacobian is None) == (budget is None)
    assert frame.strain_eV_per_atom is not None and frame.strain_rows is not None
    values, h = _TorchModel(pot).strain_components(frame)
    assert h.shape == (sum(p.numel() for p in _TorchModel(pot).params), 6)

    def nn_energy(a):
        return pot.energy_forces(a)[0]

    fd = _strain_derivative_fd(nn_energy, atoms)
    np.testing.assert_allclose(values.numpy() * len(atoms), fd, rtol=1e-6, atol=1e-7)
    assert np.abs(fd).max() > 1e-2  # rattled: the shear parts are not zero either

    zbl = ZBLBaseline(1.0, 2.0)
    tight = bulk("Be", "hcp", a=1.85, c=3.0).repeat((2, 2, 2))  # pairs inside the switch
    tight.rattle(0.05, seed=2)
    strain = zbl.energy_forces_virial(tight)[2]

    def zbl_energy(a):
        return zbl.energy_forces(a)[0]

    fd = _strain_derivative_fd(zbl_energy, tight)
    from nnprefine.training import _VOIGT

    np.testing.assert_allclose([strain[a, b] for a, b in _VOIGT], fd, rtol=1e-6, atol=1e-6)
    assert np.abs(fd).max() > 1.0


def test_strain_targets_are_the_reference_strain_derivative_minus_the_baseline(sfset):
    """N × the target + the ZBL baseline's ∂E/∂ε equals the central difference of the
    reference's own energy under strain (sign, volume, Voigt order of the label path); the
    test frames get no targets, and frames without a stress none either."""
    from nnprefine.model import ZBLBaseline
    from nnprefine.reference import SnapReference, label_frame
    from nnprefine.training import _VOIGT

    atoms = bulk("Be", "hcp", a=2.0, c=3.3).repeat((2, 2, 2))  # pairs inside the ZBL switch
    atoms.rattle(0.05, seed=6)
    labelled = label_frame(atoms, "builtin-snap")
    pot = NNPotential(sfset, hidden=(4,), seed=2, baseline=ZBLBaseline(1.0, 2.0))
    budget = _JacobianBudget(2**30, "float64")
    (frame,) = _prepare([labelled], pot, 1.0, budget, with_stress=True)
    s_b = pot.baseline.energy_forces_virial(atoms)[2]
    total = frame.strain_eV_per_atom * len(atoms) + [s_b[a, b] for a, b in _VOIGT]
    snap = SnapReference()

    def ref_energy(a):
        a.calc = snap
        return a.get_potential_energy()

    fd = _strain_derivative_fd(ref_energy, atoms)
    np.testing.assert_allclose(total, fd, rtol=1e-5, atol=1e-5)
    assert np.abs([s_b[a, b] for a, b in _VOIGT]).max() > 1e-2  # the baseline takes part
    train_set, test_set, _ = _prepare_sets([labelled], [labelled], pot, _quick(stress_weight=1.0))
    assert train_set[0].strain_eV_per_atom is not None and test_set[0].strain_eV_per_atom is None
    no_stress = labelled.copy()
    no_stress.calc = SinglePointCalculator(
        no_stress, energy=labelled.get_potential_energy(), forces=labelled.get_forces()
    )
    (plain,) = _prepare([no_stress], pot, 1.0, budget, with_stress=True)
    assert plain.strain_eV_per_atom is None and plain.strain_rows is None


def test_resume_accepts_settings_saved_before_a_key_existed(tmp_path):
    from nnprefine.training import _check_resume_settings

    saved = _quick(optimizer="kalman").to_dict()
    del saved["stress_weight"]  # a checkpoint written before the key existed
    _check_resume_settings(saved, _quick(optimizer="kalman"), tmp_path)
    with pytest.raises(ConfigError, match="stress_weight: 0.0 -> 1.0"):
        _check_resume_settings(saved, _quick(optimizer="kalman", stress_weight=1.0), tmp_path)


def _strain_rmse(pot, frames) -> float:
    """RMSE (meV/atom) of ∂E/∂ε per atom over prepared frames with strain targets."""
    tm = _TorchModel(pot)
    err = [tm.strain_components(f)[0].detach().numpy() - f.strain_eV_per_atom for f in frames]
    return 1e3 * float(np.sqrt(np.mean(np.square(err))))


@pytest.mark.parametrize(("optimizer", "factor"), [("kalman", 0.2), ("adam", 0.5)])
def test_training_on_stress_fits_the_stress(sfset, optimizer, factor):
    """With stress_weight the optimiser fits ∂E/∂ε of the strained cells far better than
    training on energies and forces alone, from the same start (646 against 13 meV/atom
    with Kalman, 400 against 116 with Adam, when written)."""
    frames = _stressed_frames(10)
    errors = {}
    for weight in (0.0, 1.0):
        pot = NNPotential(sfset, hidden=(6,), seed=3)
        s = _quick(optimizer=optimizer, epochs=4, kalman_force_fraction=0.05, stress_weight=weight)
        train(pot, frames, [], s)
        prepared = _prepare(frames, pot, 1.0, _JacobianBudget(2**30, "float64"), with_stress=True)
        _set_offsets(prepared, pot)
        errors[weight] = _strain_rmse(pot, prepared)
    assert errors[1.0] < factor * errors[0.0], errors
    with pytest.raises(ConfigError, match="stress_weight must be ≥ 0"):
        _quick(stress_weight=-1.0)
