"""The parts of the long routines, where a part has a contract of its own: the training
loop's epoch, validation and early-stopping bookkeeping; the resumable encoding loop of
``build_cache``; the sampling and edge sorting behind ``plot_projection`` / ``plot_graph``."""

import json
import warnings

import networkx as nx
import numpy as np
import pytest
import torch

from bridge import plots, training
from bridge.encoders import build
from bridge.encoders.build import BuildInterrupted, build_cache
from bridge.errors import DimensionMismatch, FolderExists, UnknownNode
from bridge.losses import make_loss

# ---------------------------------------------------------------------------
# training


def _set(net, value):
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)


def _weights(net):
    return [p.detach().clone() for p in net.parameters()]


def test_early_stop_keeps_the_best_epochs_weights_and_counts_the_rest():
    net = torch.nn.Linear(3, 2)
    _set(net, 0.0)
    stop = training._EarlyStop((0.5, 0.2), net)  # epoch 0
    _set(net, 1.0)
    stop.update(1, (0.4, 0.9), net)  # lower R@1: worse, whatever the cosine
    assert (stop.epoch, stop.bad) == (0, 1)
    _set(net, 2.0)
    stop.update(2, (0.5, 0.3), net)  # same R@1, better cosine: the new best
    assert (stop.epoch, stop.bad, stop.key) == (2, 0, (0.5, 0.3))
    _set(net, 3.0)
    stop.update(3, (0.5, 0.3), net)  # a tie is no improvement
    assert (stop.epoch, stop.bad) == (2, 1)
    with torch.no_grad():
        net.weight.add_(1.0)  # in place: the snapshot must be a copy
    stop.restore(net)
    assert all(torch.equal(w, torch.full_like(w, 2.0)) for w in _weights(net))


def test_early_stop_restores_both_directions():
    fwd, bwd = torch.nn.Linear(3, 2), torch.nn.Linear(2, 3)
    _set(fwd, 0.5)
    _set(bwd, -0.5)
    stop = training._EarlyStop((0.1, 0.1), fwd, bwd)
    _set(fwd, 9.0)
    _set(bwd, 9.0)
    stop.update(1, (0.0, 0.0), fwd, bwd)
    stop.restore(fwd, bwd)
    assert all(torch.equal(w, torch.full_like(w, 0.5)) for w in _weights(fwd))
    assert all(torch.equal(w, torch.full_like(w, -0.5)) for w in _weights(bwd))


def test_train_ends_on_the_weights_of_its_best_epoch():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 6)).astype(np.float32)
    Y = np.tanh(X @ rng.standard_normal((6, 4))).astype(np.float32)
    net = torch.nn.Linear(6, 4)
    rep, _ = training.train(net, X[:90], Y[:90], X[90:], Y[90:], epochs=30, patience=2,
                            lr=0.3, seed=1)
    assert rep.stopped_early and rep.best_epoch < rep.epochs_run  # a run that went past its best
    loss_fn = make_loss("infonce+mse")
    r1, cos, _ = training._evaluate(net, torch.as_tensor(X[90:]), torch.as_tensor(Y[90:]), None,
                                    loss_fn)
    assert (r1, cos) == (rep.best_val_r1, rep.best_val_cos)
    assert (rep.val_r1[rep.best_epoch], rep.val_cos[rep.best_epoch]) == (r1, cos)


def test_train_epoch_skips_a_last_batch_of_one_row():
    rng = np.random.default_rng(1)
    X = torch.as_tensor(rng.standard_normal((5, 3)), dtype=torch.float32)
    Y = torch.as_tensor(rng.standard_normal((5, 2)), dtype=torch.float32)
    run = training._setup(torch.nn.Linear(3, 2), None, "mse", 0.05, 1e-2, 0.0, 4,
                          torch.device("cpu"))
    rows = training.MemoryRows(X, Y, None, torch.device("cpu"))
    mean = training._train_epoch(run, rows, torch.Generator().manual_seed(0), 2, 0.0)
    steps = {int(s["step"]) for s in run.opt.state.values()}
    assert steps == {2}  # batches of 2, 2 and (skipped) 1
    assert run.sched.last_epoch == 1 and np.isfinite(mean) and mean > 0


def test_validate_averages_the_two_directions_and_fills_both_reports():
    rng = np.random.default_rng(2)
    X = torch.as_tensor(rng.standard_normal((30, 4)), dtype=torch.float32)
    Y = torch.as_tensor(rng.standard_normal((30, 4)), dtype=torch.float32)
    fwd, bwd = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    run = training._setup(fwd, bwd, "mse", 0.05, 1e-3, 0.0, 1, torch.device("cpu"))
    rep, rep_rev = training.FitReport(), training.FitReport()
    key = training._validate(run, (X, Y, None), rep, rep_rev)
    a = training._evaluate(fwd, X, Y, None, run.loss_fn)
    b = training._evaluate(bwd, Y, X, None, run.loss_rev)
    assert key == (0.5 * (a[0] + b[0]), 0.5 * (a[1] + b[1]))
    assert (rep.val_r1, rep.val_cos, rep.val_loss) == ([a[0]], [a[1]], [a[2]])
    assert (rep_rev.val_r1, rep_rev.val_cos, rep_rev.val_loss) == ([b[0]], [b[1]], [b[2]])
    one = training.FitReport()
    run1 = training._setup(fwd, None, "mse", 0.05, 1e-3, 0.0, 1, torch.device("cpu"))
    assert training._validate(run1, (X, Y, None), one, None) == (a[0], a[1])


def test_label_codes_follow_the_sorted_values():
    codes = training.label_codes(["b", "a", "c", "a"], torch.device("cpu"))
    assert codes.tolist() == [1, 0, 2, 0]
    assert training.label_codes(None, torch.device("cpu")) is None


# ---------------------------------------------------------------------------
# build_cache


class Recorder:
    """Encodes a string as ``[len, first char code, 1, 1]``; records the chunks it saw and
    raises KeyboardInterrupt on call number ``stop_on`` (1-based)."""

    name, modality, dim = "rec", "text", 4

    def __init__(self, stop_on=None, width=4):
        self.calls, self.stop_on, self.width = [], stop_on, width

    def encode(self, items, batch_size=None, progress=False):
        self.calls.append(list(items))
        if self.stop_on is not None and len(self.calls) == self.stop_on:
            raise KeyboardInterrupt
        rows = [[len(s), ord(s[0])] + [1.0] * (self.width - 2) for s in items]
        return np.asarray(rows, dtype=np.float32)


ITEMS = [f"s{i}" for i in range(10)]


def test_chunk_bounds_cover_every_row_once():
    assert build._chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert build._chunk_bounds(8, 4) == [(0, 4), (4, 8)]
    assert build._chunk_bounds(3, 5) == [(0, 3)]


def test_missing_chunks_are_the_absent_and_the_unreadable(tmp_path):
    bounds = build._chunk_bounds(10, 4)
    np.save(build._part_path(tmp_path, 0), np.zeros((4, 3), np.float32))
    np.save(build._part_path(tmp_path, 1), np.zeros((3, 3), np.float32))  # wrong row count
    build._part_path(tmp_path, 2).write_bytes(b"not an npy file")
    assert build._missing_chunks(tmp_path, bounds) == [1, 2]
    np.save(build._part_path(tmp_path, 1), np.zeros((4, 3), np.float32))
    assert build._missing_chunks(tmp_path, bounds) == [2]


def test_encoding_loop_resumes_from_the_first_missing_part(tmp_path):
    out = tmp_path / "c"
    with pytest.raises(BuildInterrupted):
        build_cache(Recorder(stop_on=3), ITEMS, ITEMS, out, chunk_size=3, progress=False)
    parts = out / "parts"
    bounds = build._chunk_bounds(len(ITEMS), 3)
    todo = build._missing_chunks(parts, bounds)
    assert todo == [2, 3]
    enc = Recorder()
    build._encode_chunks(enc, ITEMS, bounds, todo, parts, 4, batch_size=None, progress=False,
                         name="rec", out_dir=out)
    assert enc.calls == [ITEMS[6:9], ITEMS[9:]]
    assert build._missing_chunks(parts, bounds) == []
    np.testing.assert_array_equal(build._assemble_parts(parts, bounds)[:, 0], [2] * 10)


def test_encoding_loop_interrupt_counts_the_rows_in_finished_parts(tmp_path):
    bounds = build._chunk_bounds(len(ITEMS), 3)
    np.save(build._part_path(tmp_path, 0), np.ones((3, 4), np.float32))
    enc = Recorder(stop_on=2)  # chunk 1 is written, chunk 2 interrupted
    with pytest.raises(BuildInterrupted) as e:
        build._encode_chunks(enc, ITEMS, bounds, [1, 2, 3], tmp_path, 4, batch_size=None,
                             progress=False, name="rec", out_dir=tmp_path)
    assert (e.value.rows_done, e.value.rows_total, e.value.out_dir) == (6, 10, str(tmp_path))
    assert isinstance(e.value.__cause__, KeyboardInterrupt)
    assert build._missing_chunks(tmp_path, bounds) == [2, 3]


def test_encode_chunk_of_another_width_writes_nothing(tmp_path):
    path = build._part_path(tmp_path, 0)
    with pytest.raises(DimensionMismatch, match="returned width 5 for part-000000.npy .* width 4"):
        build._encode_chunk(Recorder(width=5), ITEMS, 0, 3, path, 4, None, "rec")
    assert not path.exists()
    assert build._encode_chunk(Recorder(width=5), ITEMS, 0, 3, path, None, None, "rec") == 5
    assert np.load(path).shape == (3, 5)


def _manifest(**kw):
    m = {"encoder": "rec", "model": None, "rows": 10, "chunk_size": 3, "ids": "x"}
    m.update(kw)
    return m


def test_stale_parts_of_the_same_encoder_are_discarded_others_refused(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps(_manifest()))
    build._discard_stale_parts(parts, _manifest(), overwrite=False)  # this build's: kept
    assert parts.exists()
    (parts / "manifest.json").write_text(json.dumps(_manifest(encoder="other")))
    with pytest.raises(FolderExists, match="made by encoder 'other'"):
        build._discard_stale_parts(parts, _manifest(), overwrite=False)
    assert parts.exists()
    with pytest.warns(UserWarning, match="discarding unfinished parts"):
        build._discard_stale_parts(parts, _manifest(), overwrite=True)
    assert not parts.exists()
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps(_manifest(chunk_size=4)))
    with pytest.warns(UserWarning, match="another encoder, id list or chunk size"):
        build._discard_stale_parts(parts, _manifest(), overwrite=False)
    assert not parts.exists()


def test_the_discard_warning_points_at_the_caller_of_build_cache(tmp_path):
    out = tmp_path / "c"
    with pytest.raises(BuildInterrupted):
        build_cache(Recorder(stop_on=2), ITEMS, ITEMS, out, chunk_size=3, progress=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        build_cache(Recorder(), ITEMS, ITEMS, out, chunk_size=4, progress=False)
    assert [x.filename for x in w] == [__file__]


# ---------------------------------------------------------------------------
# plots


def test_sampled_rows_always_hold_the_ends_of_the_lines():
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((200, 3)), "b": rng.standard_normal((30, 3))}
    prs = [("a", "b", np.arange(30) + 150, np.arange(30))]
    lines = plots._sample_lines(prs, 12, np.random.default_rng(1))
    (na, nb, ra, rb), = lines
    assert (na, nb) == ("a", "b") and ra.size == rb.size == 12
    np.testing.assert_array_equal(ra - 150, rb)  # the pairs stay pairs
    keep = plots._sample_rows(arrays, lines, 30, np.random.default_rng(2))
    assert set(ra) <= set(keep["a"]) and 30 <= keep["a"].size <= 42
    assert np.all(np.diff(keep["a"]) > 0)
    np.testing.assert_array_equal(keep["b"], np.arange(30))  # under max_points: every row


def test_projected_rows_are_found_through_the_lookup():
    rng = np.random.default_rng(3)
    arrays = {"a": rng.standard_normal((12, 4)), "b": rng.standard_normal((5, 4))}
    keep = {"a": np.array([0, 3, 7, 11]), "b": np.arange(5)}
    proj, pos, labels = plots._project_kept(arrays, keep, False, "pca", 0)
    assert proj["a"].shape == (4, 2) and proj["b"].shape == (5, 2)
    np.testing.assert_array_equal(pos["a"][keep["a"]], np.arange(4))
    assert (np.delete(pos["a"], keep["a"]) == -1).all()
    assert labels[0].startswith("PC 1")
    # the joint projection is a centred linear map of the rows: rows 3 and 7 of "a"
    full, _, _ = plots._project_kept({"a": arrays["a"][keep["a"]], "b": arrays["b"]},
                                     {"a": np.arange(4), "b": np.arange(5)}, False, "pca", 0)
    np.testing.assert_allclose(proj["a"][pos["a"][[3, 7]]], full["a"][[1, 2]])


def test_edges_split_by_measured_value_and_styled_as_arcs_only_when_opposite():
    G = nx.DiGraph()
    G.add_edge("a", "b", r1=0.5)
    G.add_edge("b", "a", r1=float("nan"))
    G.add_edge("b", "c")
    G.add_edge("c", "d", r1=0.25)
    measured, values, unmeasured = plots._split_edges(G, "r1")
    assert measured == [("a", "b"), ("c", "d")] and values == [0.5, 0.25]
    assert unmeasured == [("b", "a"), ("b", "c")]
    half = plots._split_edges(G, lambda u, v, d: d.get("r1", 0.0) / 2)
    assert half[1] == [0.25, 0.0, 0.125] and half[2] == [("b", "a")]
    assert plots._edge_style(G, "a", "b") == plots._edge_style(G, "b", "a") == "arc3,rad=0.18"
    assert plots._edge_style(G, "b", "c") == "arc3,rad=0.0"
    assert plots._edge_style(G.to_undirected(), "a", "b") == "arc3,rad=0.0"


def test_graph_layout_keeps_a_given_layout_and_names_a_node_it_lacks():
    G = nx.DiGraph([("a", "b"), ("b", "c")])
    pos = {"a": (0, 0), "b": (1, 0), "c": (0, 1)}
    assert plots._graph_layout(G, pos, 0) is pos
    with pytest.raises(UnknownNode, match="unknown node 'c'"):
        plots._graph_layout(G, {"a": (0, 0), "b": (1, 0)}, 0)
    assert set(plots._graph_layout(G, None, 0)) == {"a", "b", "c"}
