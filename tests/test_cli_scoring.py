"""``bridge eval --scoring``: hubness-aware scoring from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bridge
from bridge.cli import main
from bridge.evaluate import evaluate_route
from bridge.store import Cache


@pytest.fixture
def saved(tmp_path):
    r = np.random.default_rng(5)
    n, d = 240, 12
    A = r.standard_normal((n, d)).astype(np.float32)
    hub = r.standard_normal(d).astype(np.float32)
    B = (A @ np.linalg.qr(r.standard_normal((d, d)))[0] + 1.5 * hub
         + 0.8 * r.standard_normal((n, d))).astype(np.float32)
    ids = [f"{'train' if i < 160 else 'val' if i < 200 else 'test'}:{i}" for i in range(n)]
    g = bridge.ModalityGraph(splits="prefix")
    g.add_node("a@x", Cache.from_arrays(A, ids))
    g.add_node("b@y", Cache.from_arrays(B, ids))
    g.connect("a@x", "b@y", translator="linear", alpha=1.0, directions="forward")
    return g, g.save(tmp_path / "g")


@pytest.mark.parametrize("scoring", ["csls", "qbnorm:beta=30,k=1"])
def test_eval_scoring_matches_the_api(saved, tmp_path, capsys, scoring):
    g, path = saved
    out = tmp_path / "r.json"
    assert main(["eval", str(path), "a@x", "b@y", "--scoring", scoring, "--bank", "train",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "query bank: 160 train rows" in printed
    got = json.loads(out.read_text())["route"]
    want = evaluate_route(g, "a@x", "b@y", scoring=scoring, bank="train")
    assert got["R@1"] == want["R@1"] and got["MRR"] == pytest.approx(want["MRR"])
    plain = evaluate_route(g, "a@x", "b@y")
    assert "scoring" not in plain and got["scoring"] != "cosine"


def test_eval_refuses_a_bad_scoring_naming_it(saved, capsys):
    _, path = saved
    with pytest.raises(SystemExit) as e:
        main(["eval", str(path), "a@x", "b@y", "--scoring", "cls:k=3"])
    assert e.value.code == 2
    assert "cls" in capsys.readouterr().err
