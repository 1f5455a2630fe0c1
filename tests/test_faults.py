"""Crash safety of saves: processes killed with SIGKILL at random points and exactly
between the steps of the final swap; two processes saving one folder at once."""

import os
import random
import signal
import time
import traceback

import numpy as np
import pytest

import bridge.files as files
from bridge import ModalityGraph, load_graph
from bridge.errors import FolderLocked
from bridge.files import FolderLock, atomic_dir
from bridge.store import Cache
from bridge.translators import LinearTranslator

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

D = 4
N = 12

#: random kills per swap mode (raise it to measure: BRIDGE_FAULT_KILLS=200 pytest -s ...)
RANDOM_KILLS = int(os.environ.get("BRIDGE_FAULT_KILLS", "20"))


def _base():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    T = LinearTranslator(alpha=0.0).fit(x, x)
    T.W_ = np.eye(D, dtype=np.float32)
    T.b_ = np.zeros(D, np.float32)
    return x, T


def make_graph(version: int) -> ModalityGraph:
    """A two-node graph whose every file depends on ``version``."""
    x, T = _base()
    T.W_ = np.eye(D, dtype=np.float32) * (1 + version)
    g = ModalityGraph()
    ids = [f"i{k}" for k in range(N)]
    g.add_node("text:en@a", Cache(ids=ids, emb=x + version), note=f"v{version}")
    g.add_node("text:de@b", Cache(ids=ids, emb=x - version), note=f"v{version}")
    g.add_edge("text:en@a", "text:de@b", T, {"val_R@1": 0.5, "version": version})
    return g


def version_of(path) -> int:
    """The version of the graph saved at ``path``, checking that every file agrees."""
    g = load_graph(path)
    v = int(g.node("text:en@a")["note"][1:])
    x, _ = _base()
    assert g.node("text:de@b")["note"] == f"v{v}"
    np.testing.assert_array_equal(g.cache("text:en@a").vectors(), x + v)
    np.testing.assert_array_equal(g.cache("text:de@b").vectors(), x - v)
    T = g.translator("text:en@a", "text:de@b")
    np.testing.assert_array_equal(T.W_, np.eye(D, dtype=np.float32) * (1 + v))
    assert g.edge("text:en@a", "text:de@b")["metrics"]["version"] == v
    return v


def _child_loop(path, start, wfd, stage=None, exchange=True):
    """In a forked child: save versions start, start+1, ... forever, reporting each one
    finished on ``wfd``; with ``stage``, SIGKILL itself at that point of the second save."""
    try:
        files._USE_EXCHANGE = exchange
        saves = [0]
        if stage is not None:
            def hook(s, p):
                if s == stage and saves[0] == 1:
                    os.kill(os.getpid(), signal.SIGKILL)
            files._fault_hook = hook
        v = start
        while True:
            make_graph(v).save(path)
            os.write(wfd, f"{v}\n".encode())
            saves[0] += 1
            v += 1
    except BaseException:
        os.write(wfd, ("ERR " + traceback.format_exc().replace("\n", " | ") + "\n").encode())
        os._exit(1)


def _fork(fn, *args, **kw):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            fn(*args, w, **kw)
        finally:
            os._exit(1)
    os.close(w)
    return pid, r


def _read_all(r) -> list[str]:
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    return b"".join(chunks).decode().split()


def _finished(lines) -> list[int]:
    errs = [ln for ln in lines if ln.startswith("ERR")]
    assert not errs, " ".join(lines)
    return [int(v) for v in lines if v.isdigit()]


def _hidden_left(folder, name="g"):
    return sorted(n for n in os.listdir(folder) if n != name)


def _one_kill(tmp_path, path, version, delay=None, stage=None, exchange=True):
    """Start a saving child from ``version``, kill it, check the folder; returns the
    next version to use and what the dead process left beside the folder."""
    pid, r = _fork(_child_loop, path, version, stage=stage, exchange=exchange)
    if stage is None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        status, _read_all(r))
    done = _finished(_read_all(r))
    last = done[-1] if done else version - 1
    left = _hidden_left(tmp_path)
    # the folder always loads, as one whole saved version: the last one finished or the
    # one that was being written when the process died
    got = version_of(path)
    assert got in (last, last + 1), (got, last)
    if stage == "written":
        assert got == last
    if stage in ("swapped", "moved-out"):
        assert got in (last, last + 1)
    # the next save cleans up what the dead process left
    nxt = max(got, last) + 1
    make_graph(nxt).save(path)
    assert _hidden_left(tmp_path) == [], _hidden_left(tmp_path)
    assert version_of(path) == nxt
    return nxt + 1, left


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_kill_at_random_points_and_between_renames(tmp_path, exchange, monkeypatch):
    if exchange and not files._exchange_supported(tmp_path):
        pytest.skip("this file system has no RENAME_EXCHANGE")
    path = tmp_path / "g"
    make_graph(0).save(path)
    v = 1
    stages = ["written", "swapped"] + ([] if exchange else ["moved-out"])
    for stage in stages:
        v, left = _one_kill(tmp_path, path, v, stage=stage, exchange=exchange)
        assert left, stage  # the hook stopped the save half-way: something was left
    if not exchange:
        # a kill between the two renames leaves nothing at the path until a loader or
        # the next save renames the previous folder back
        pid, r = _fork(_child_loop, path, v, stage="moved-out", exchange=False)
        os.waitpid(pid, 0)
        _read_all(r)
        assert not path.exists()
        assert any(n.startswith(".g.old-") for n in os.listdir(tmp_path))
        assert version_of(path) == v  # the first save of the child finished
        make_graph(v + 5).save(path)
        assert _hidden_left(tmp_path) == []
        v += 6
    rnd = random.Random(1234)
    kills = mid_save = 0
    for _ in range(RANDOM_KILLS):
        v, left = _one_kill(tmp_path, path, v, delay=rnd.uniform(0.0, 0.03), exchange=exchange)
        kills += 1
        mid_save += bool(left)
    print(f"\n{'exchange' if exchange else 'two-renames'}: {kills} random kills "
          f"({mid_save} inside a save) + {len(stages)} at the swap steps; every load complete, "
          "nothing stale after the next save")
    assert kills + len(stages) >= 22


def test_two_processes_saving_one_folder_take_turns(tmp_path):
    path = tmp_path / "g"
    make_graph(0).save(path)

    def saver(start, wfd):
        try:
            for k in range(15):
                make_graph(start + 2 * k).save(path)
                os.write(wfd, f"{start + 2 * k}\n".encode())
            os._exit(0)
        except BaseException:
            os.write(wfd, ("ERR " + traceback.format_exc().replace("\n", " | ") + "\n").encode())
            os._exit(1)

    procs = [_fork(saver, s) for s in (100, 101)]
    outs = []
    for pid, r in procs:
        lines = _read_all(r)
        _, status = os.waitpid(pid, 0)
        outs.append(lines)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, lines
    assert [len(_finished(o)) for o in outs] == [15, 15]
    assert version_of(path) in {100 + 28, 101 + 28}
    assert _hidden_left(tmp_path) == []


def test_loads_during_saves_see_one_whole_version(tmp_path):
    path = tmp_path / "g"
    make_graph(0).save(path)
    pid, r = _fork(_child_loop, path, 1)
    try:
        seen = [version_of(path) for _ in range(25)]  # checks every file agrees
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    done = _finished(_read_all(r))
    assert seen == sorted(seen) and seen[-1] <= done[-1] + 1


def test_a_locked_folder_raises_folder_locked(tmp_path):
    path = tmp_path / "g"
    make_graph(0).save(path)
    with FolderLock(path):
        with pytest.raises(FolderLocked, match=str(path)):
            with atomic_dir(path, kind="graph", timeout=0.2):
                pass
    # the lock is gone with its holder; nothing stale is left
    with atomic_dir(path, kind="graph", timeout=0.2) as tmp:
        (tmp / "manifest.json").write_text('{"format": "modality-bridge-graph"}')
    assert _hidden_left(tmp_path) == []


def test_stale_folders_of_a_live_process_are_kept(tmp_path):
    """Only hidden folders of processes that are gone are deleted."""
    path = tmp_path / "g"
    make_graph(0).save(path)
    live = tmp_path / f".g.tmp-{os.getppid()}-{files._start_time(os.getppid())}-abcd"
    dead = tmp_path / ".g.tmp-999999999-1-abcd"
    live.mkdir()
    dead.mkdir()
    make_graph(1).save(path)
    assert live.exists() and not dead.exists()
    assert version_of(path) == 1


def test_single_file_cache_save_cleans_dead_writers_temp_files(tmp_path):
    from bridge.store import load_cache, save_cache

    x, _ = _base()
    c = Cache(ids=[str(k) for k in range(N)], emb=x)
    live = tmp_path / f".c.npz.tmp-{os.getppid()}-{files._start_time(os.getppid())}-x"
    dead = tmp_path / ".c.npz.tmp-999999999-1-x"
    live.write_bytes(b"half")
    dead.write_bytes(b"half")
    save_cache(tmp_path / "c.npz", c, dtype="float32")
    assert live.exists() and not dead.exists()
    np.testing.assert_array_equal(load_cache(tmp_path / "c.npz").vectors(), x)
