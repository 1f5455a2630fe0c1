"""One MLP edge trained on two CPU processes (gloo) equals the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bridge
from bridge import distributed
from bridge.errors import BridgeError
from bridge.store import Cache, save_cache
from bridge.translators import MLPTranslator, load_translator

pytest.importorskip("torch.distributed")

#: dropout 0: dropout masks cannot match across world sizes (see bridge.distributed)
KW = dict(width=32, depth=2, dropout=0.0, epochs=3, batch_size=96, patience=5, seed=1)


def _data(n=2000, dx=32, dy=24, noise=0.1, seed=0):
    r = np.random.default_rng(seed)
    X = r.standard_normal((n, dx)).astype(np.float16)
    Y = (X.astype(np.float32) @ r.standard_normal((dx, dy)) / 5
         + noise * r.standard_normal((n, dy))).astype(np.float16)
    return X, Y


def _torchrun(args, cwd, timeout=150, tries=3):
    """``torchrun --standalone`` on 2 processes. The gloo start-up of this torch build now
    and then aborts a rank before any of the script runs (SIGABRT, "terminate called
    without an active exception", within seconds); such a start is run again, up to
    ``tries`` times. Any other failure, and every result, is returned as it is."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", *args]
    for _ in range(tries):
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=timeout)
        aborted = res.returncode != 0 and "terminate called without an active exception" \
            in res.stderr and "SIGABRT" in res.stderr
        if not aborted:
            break
    return res


def _caches(tmp_path, n=1200, extra=400):
    """Two caches paired by id: every source row has one target row, and the first
    ``extra`` have a second (rows of one id then share a label: the labelled loss)."""
    X, Y = _data(n=n, noise=0.5)  # noisy: held-out R@1 below 1, so epochs matter
    ids = [f"s{i}" for i in range(n)]
    save_cache(tmp_path / "src", Cache.from_arrays(X, ids))
    second = (Y[:extra] + 0.3 * np.random.default_rng(1).standard_normal(Y[:extra].shape))
    # another row order than the source's, then the second targets of the first ids
    dst = np.concatenate([Y[::-1], second.astype(np.float16)])
    save_cache(tmp_path / "dst", Cache.from_arrays(dst, ids[::-1] + ids[:extra]))
    return tmp_path / "src", tmp_path / "dst"


def test_two_processes_on_the_command_line_train_the_edge_one_process_would(tmp_path):
    """``torchrun -m bridge.distributed`` on 2 CPU processes (gloo) against
    ``ModalityGraph.connect`` in one: the same pairs, split and weights (within 1e-5).

    Blocks of 256 rows (batches span blocks); 1001 rows an epoch, so the last global batch
    of 41 rows splits 21 + 20 (a padding row); a random start (init none), so that
    early stopping keeps a trained epoch."""
    src, dst = _caches(tmp_path)
    kw = {**KW, "chunk_rows": 256, "epoch_rows": 1001, "init": None}
    flags = ["--width", "32", "--dropout", "0", "--epochs", "3", "--batch-size", "96",
             "--patience", "5", "--seed", "1", "--chunk-rows", "256", "--epoch-rows", "1001",
             "--init", "none"]
    res = _torchrun(["-m", "bridge.distributed", "--src", str(src), "--dst", str(dst),
                     "--out", str(tmp_path / "edge"), *flags], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    two = load_translator(tmp_path / "edge")
    assert out["world_size"] == 2 and two.fit_report_["world_size"] == 2
    assert two.fit_report_["best_epoch"] > 0  # early stopping kept a trained epoch
    # one process, through ModalityGraph.connect: pairing by ids, split, streamed rows
    g = bridge.ModalityGraph(fractions=(0.8, 0.1, 0.1), seed=1)
    g.add_node("src", bridge.load_cache(src))
    g.add_node("dst", bridge.load_cache(dst))
    metrics = g.connect("src", "dst", translator=MLPTranslator(**kw),
                        directions="forward")[("src", "dst")]
    one = g.G.edges["src", "dst"]["translator"]
    assert one.fit_report_["n_train"] == out["metrics"]["n_train"] > 1001
    wa, wb = one._get_state(), two._get_state()
    w0 = MLPTranslator(**kw).build(32, 24).state_dict()
    assert max(float(np.abs(wa[k] - w0[k].numpy()).max()) for k in wa) > 1e-3  # it trained
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=0, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(two.fit_report_["train_loss"], one.fit_report_["train_loss"],
                               rtol=1e-6)
    assert two.fit_report_["best_epoch"] == one.fit_report_["best_epoch"]
    for key in ("n_train", "n_val", "n_test"):
        assert out["metrics"][key] == metrics[key]
    assert out["metrics"]["test_R@1"] == pytest.approx(metrics["test_R@1"], abs=1e-3)


GRADIENTS = """
import sys
from types import SimpleNamespace
import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from bridge.distributed import ShardedRows
from bridge.losses import make_loss
from bridge.translators import MLPTranslator

folder = sys.argv[1]
dist.init_process_group("gloo")
X = np.load(folder + "/x.npy", mmap_mode="r")
Y = np.load(folder + "/y.npy", mmap_mode="r")
net = MLPTranslator(width=32, dropout=0.0, init=None, seed=1).build(32, 24)
loss_fn = make_loss("infonce+mse")
rows = ShardedRows(X, Y, None, torch.device("cpu"), DistributedDataParallel(net), 256,
                   dist.get_rank(), dist.get_world_size())
batch, size = next(rows.epoch(torch.Generator().manual_seed(0), 97))  # 49 + 48 rows
rows.loss(SimpleNamespace(loss_fn=loss_fn), batch, 0.0).backward()
if dist.get_rank() == 0:
    grads = {k: p.grad.numpy() for k, p in net.named_parameters()}
    grads["log_t"] = loss_fn.terms["infonce"].log_t.grad.numpy()
    np.savez(folder + "/grads.npz", **grads)
dist.destroy_process_group()
"""


def test_the_gathered_loss_gives_each_step_the_single_process_gradient(tmp_path):
    """AdamW hides a constant factor on the gradients, so the gradient of one global batch
    is compared directly: the gather's backward sums ``world`` identical losses and DDP
    averages over ``world`` ranks, which gives the single-process gradient exactly."""
    from types import SimpleNamespace

    import torch

    from bridge.losses import make_loss
    from bridge.training import ChunkedRows

    X, Y = _data(n=1000)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y)
    (tmp_path / "grads.py").write_text(GRADIENTS)
    res = _torchrun([str(tmp_path / "grads.py"), str(tmp_path)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(tmp_path / "grads.npz", allow_pickle=False) as f:
        two = dict(f)
    net = MLPTranslator(width=32, dropout=0.0, init=None, seed=1).build(32, 24)
    loss_fn = make_loss("infonce+mse")
    Xm, Ym = (np.load(tmp_path / f"{k}.npy", mmap_mode="r") for k in ("x", "y"))
    rows = ChunkedRows(Xm, Ym, None, torch.device("cpu"), 256)
    batch, size = next(rows.epoch(torch.Generator().manual_seed(0), 97))
    run = SimpleNamespace(model=net, loss_fn=loss_fn, reverse=None)
    rows.loss(run, batch, 0.0).backward()
    one = {k: p.grad.numpy() for k, p in net.named_parameters()}
    one["log_t"] = loss_fn.terms["infonce"].log_t.grad.numpy()
    assert one.keys() == two.keys()
    for k in one:
        scale = float(np.abs(one[k]).max())
        assert scale > 0, k
        np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=1e-6 * scale, err_msg=k)


@pytest.mark.parametrize("argv,env,message", [
    (["--batch-size", "63"], {"WORLD_SIZE": "2", "RANK": "0"},
     "--batch-size 63 (the global batch) is not a multiple of the world size 2"),
    (["--epochs", "-1"], {}, "'epochs'"),
    (["--val-fraction", "0.6", "--test-fraction", "0.5"], {}, "leave no training rows"),
    ([], {"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
])
def test_bad_arguments_are_refused_with_a_clear_error(tmp_path, monkeypatch, capsys, argv, env,
                                                      message):
    src, dst = _caches(tmp_path, n=100)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = distributed.main(["--src", str(src), "--dst", str(dst), "--out",
                             str(tmp_path / "edge"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("bridge.distributed: error: ") and message in err
    assert not (tmp_path / "edge").exists()


def test_an_unknown_cache_is_named(tmp_path, monkeypatch, capsys):
    src, _ = _caches(tmp_path, n=100)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = distributed.main(["--src", str(src), "--dst", str(tmp_path / "nope"), "--out",
                             str(tmp_path / "edge")])
    err = capsys.readouterr().err
    assert code == 2 and f"--dst '{tmp_path / 'nope'}': no cache there" in err


def test_fit_distributed_outside_a_process_group_says_how_to_launch():
    X, Y = _data(n=50)
    with pytest.raises(BridgeError, match="torchrun"):
        distributed.fit_distributed(MLPTranslator(**KW), X, Y)
