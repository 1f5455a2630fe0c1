import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

from bridge import gap, plots  # noqa: E402
from bridge.errors import DimensionMismatch, EmptyData, MissingExtra, UnknownNode  # noqa: E402
from bridge.store import Pairs  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _scatter_points(ax):
    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


def _lines(ax):
    return sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))


def test_import_does_not_load_matplotlib():
    code = "import sys, bridge.plots, bridge.gap; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# projection


def _clouds(rng, d=8):
    a = rng.standard_normal((40, d))
    return {"image@clip": a, "text:en@minilm": a + 0.2 * rng.standard_normal((40, d)) + 2,
            "audio@aisfx": rng.standard_normal((25, d))}


def test_projection_points_lines_labels(rng):
    named = _clouds(rng)
    ax = plots.plot_projection(named, pairs=[("image@clip", "text:en@minilm")], n_lines=10,
                               title="my title")
    assert _scatter_points(ax) == 105
    assert _lines(ax) == 10
    assert ax.get_title() == "my title"
    assert ax.get_xlabel().startswith("PC 1") and ax.get_ylabel().startswith("PC 2")
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("image@clip") for t in texts) and len(texts) == 4
    # nodes get distinct colours
    cols = {tuple(c.get_facecolor()[0]) for c in ax.collections if isinstance(c, PathCollection)}
    assert len(cols) == 3


def test_projection_index_pairs_and_pairs_object(rng):
    named = _clouds(rng)
    idx = np.arange(5)
    ax = plots.plot_projection(named, pairs=[("image@clip", "audio@aisfx", idx, idx + 3)])
    assert _lines(ax) == 5
    p = Pairs(np.array([0, 1, 2]), np.array([4, 5, 6]), np.array(["x", "y", "z"]))
    ax = plots.plot_projection(named, pairs=[("image@clip", "audio@aisfx", p)])
    assert _lines(ax) == 3


def test_projection_max_points_keeps_line_ends(rng):
    named = {"a": rng.standard_normal((500, 4)), "b": rng.standard_normal((500, 4))}
    ax = plots.plot_projection(named, pairs=[("a", "b")], n_lines=30, max_points=50)
    n = _scatter_points(ax)
    assert 100 <= n <= 160
    assert _lines(ax) == 30


def test_projection_errors(rng):
    with pytest.raises(DimensionMismatch, match="'a': 4.*'b': 5"):
        plots.plot_projection({"a": rng.standard_normal((5, 4)), "b": rng.standard_normal((5, 5))})
    named = {"a": rng.standard_normal((5, 4)), "b": rng.standard_normal((6, 4))}
    with pytest.raises(DimensionMismatch, match="row i pairs with row i"):
        plots.plot_projection(named, pairs=[("a", "b")])
    with pytest.raises(UnknownNode, match="'c'"):
        plots.plot_projection(named, pairs=[("a", "c")])
    with pytest.raises(ValueError, match="'pca' or 'umap'"):
        plots.plot_projection(named, method="tsne")
    with pytest.raises(EmptyData):
        plots.plot_projection({})


def test_projection_umap_missing_names_extra(rng, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` fail
    with pytest.raises(MissingExtra, match=r"modality-bridge\[umap\]") as e:
        plots.plot_projection({"a": rng.standard_normal((20, 4))}, method="umap")
    assert e.value.extra == "umap" and "umap-learn" in str(e.value)


@pytest.mark.slow
def test_projection_umap(rng):
    pytest.importorskip("umap")
    ax = plots.plot_projection(_clouds(rng), method="umap")
    assert _scatter_points(ax) == 105 and ax.get_xlabel() == "UMAP 1"


def test_projection_before_after(rng):
    before = _clouds(rng)
    after = {k + " → image": v for k, v in before.items()}
    fig = plots.plot_projection_before_after(before, after, suptitle="gap")
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["Before translation", "After translation"]
    assert all(_scatter_points(ax) == 105 for ax in fig.axes)
    # colours follow node position across panels
    c0 = [tuple(c.get_facecolor()[0]) for c in fig.axes[0].collections]
    c1 = [tuple(c.get_facecolor()[0]) for c in fig.axes[1].collections]
    assert c0 == c1


# ---------------------------------------------------------------------------
# gap bars


def test_gap_bars(rng):
    x = rng.standard_normal((60, 6))
    rows = gap.gap_table({"a": x, "b": x + 1, "c": rng.standard_normal((60, 6))}, k=5)
    ax = plots.plot_gap_bars(rows)
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 3 * 4
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a vs b", "a vs c", "b vs c"]
    assert ax.get_ylabel() and ax.get_title()
    assert len(ax.get_legend().get_texts()) == 4


def test_gap_bars_missing_metric_draws_no_bar():
    rows = [{"pair": "p", "linear_cka": 0.5}, {"pair": "q", "linear_cka": 0.7, "mutual_knn": 0.2}]
    ax = plots.plot_gap_bars(rows, metrics=("linear_cka", "mutual_knn"))
    assert len([p for p in ax.patches if isinstance(p, Rectangle)]) == 3
    with pytest.raises(EmptyData):
        plots.plot_gap_bars([])
    with pytest.raises(ValueError, match="none of the metrics"):
        plots.plot_gap_bars(rows, metrics=("alignment",))


# ---------------------------------------------------------------------------
# hops


def test_hops_single_series_with_iqr(rng):
    losses = [rng.uniform(0, 0.1 * h, 200) for h in (1, 2, 3)]
    ax = plots.plot_hops([1, 2, 3], losses)
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), [v.mean() for v in losses])
    assert ax.get_xlabel() == "number of hops" and "1 − cos" in ax.get_ylabel()
    assert len(ax.collections) == 1  # the interquartile band
    assert "interquartile range" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_hops_several_series_and_means(rng):
    s1 = [rng.uniform(0, 0.2, 50) for _ in range(4)]
    s2 = [0.1, 0.2, 0.3, 0.4]
    ax = plots.plot_hops([1, 2, 3, 4], [s1, s2], labels=["procrustes", "mlp"], spread="std")
    assert len(ax.get_lines()) >= 2
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "procrustes" in texts and "mlp" in texts
    ax = plots.plot_hops([1, 2], {"x": [0.1, 0.2], "y": np.ones((2, 5))})
    assert len(ax.get_lines()) == 2


def test_hops_errors():
    with pytest.raises(DimensionMismatch, match="2 loss entries for 3 hops"):
        plots.plot_hops([1, 2, 3], [0.1, 0.2])
    with pytest.raises(DimensionMismatch, match="1 labels for 2 series"):
        plots.plot_hops([1], [[0.1], [0.2]], labels=["a"])
    with pytest.raises(ValueError, match="spread"):
        plots.plot_hops([1], [0.1], spread="sem")


# ---------------------------------------------------------------------------
# heatmap


def test_r1_heatmap(rng):
    names = ["text:en@minilm", "text:de@e5", "image@clip", "audio@aisfx"]
    m = rng.uniform(0, 1, (4, 4))
    np.fill_diagonal(m, np.nan)
    m[3, 0] = np.nan
    ax = plots.plot_r1_heatmap(names, m)
    arr = ax.images[0].get_array()
    assert arr.shape == (4, 4)
    assert arr.mask.sum() == 5  # NaN cells masked -> blank
    assert len(ax.texts) == 16 - 5
    assert format(m[0, 1], ".2f") in [t.get_text() for t in ax.texts]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert ax.get_xticklabels()[0].get_rotation() == 40
    assert ax.get_xlabel() == "target node" and ax.get_ylabel() == "source node"
    assert len(ax.figure.axes) == 2  # the colourbar
    with pytest.raises(DimensionMismatch, match=r"\(3, 3\).*\(4, 4\)"):
        plots.plot_r1_heatmap(names, np.zeros((3, 3)))


# ---------------------------------------------------------------------------
# graph


def _graph():
    G = nx.DiGraph()
    for n, mod in [("text:en@minilm", "text"), ("text:de@e5", "text"), ("image@clip", "image"),
                   ("audio@aisfx", "audio")]:
        G.add_node(n, modality=mod)
    G.add_edge("text:en@minilm", "image@clip", r1=0.4)
    G.add_edge("image@clip", "text:en@minilm", r1=0.35)  # opposite pair: two arcs
    G.add_edge("text:de@e5", "text:en@minilm", r1=0.9)
    G.add_edge("audio@aisfx", "image@clip")  # unmeasured
    return G


def test_plot_graph(rng):
    G = _graph()
    ax = plots.plot_graph(G, title="g")
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == G.number_of_edges()
    rads = sorted(a.get_connectionstyle().rad for a in arrows)
    assert rads.count(0.18) == 2 and rads.count(0.0) == 2
    labels = {t.get_text() for t in ax.texts}
    assert set(G.nodes) <= labels and "0.90" in labels
    assert ax.get_title() == "g"
    assert len(ax.figure.axes) == 2  # colourbar
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"audio", "image", "text", "not measured"} <= set(legend)


def test_plot_graph_callable_weight_and_undirected():
    G = _graph()
    ax = plots.plot_graph(G, weight=lambda u, v, d: d.get("r1", 0.0) / 2, edge_labels=False)
    assert len([p for p in ax.patches if isinstance(p, FancyArrowPatch)]) == 4
    U = nx.Graph([("a", "b", {"r1": 0.5}), ("b", "c", {"r1": 0.2})])
    ax = plots.plot_graph(U)
    assert {"a", "b", "c"} <= {t.get_text() for t in ax.texts}
    with pytest.raises(EmptyData):
        plots.plot_graph(nx.DiGraph())


# ---------------------------------------------------------------------------
# saving


def test_save_figure_png_atomic(tmp_path, rng):
    ax = plots.plot_r1_heatmap(["a", "b"], np.array([[np.nan, 0.5], [0.25, np.nan]]))
    out = plots.save_figure(ax, tmp_path / "sub" / "h.png", dpi=60)
    assert out.read_bytes()[:8] == PNG
    assert [p.name for p in out.parent.iterdir()] == ["h.png"]  # no temp file left behind
    fig = plots.plot_projection_before_after({"a": rng.standard_normal((10, 3))},
                                             {"a": rng.standard_normal((10, 3))})
    out = plots.save_figure(fig, tmp_path / "ba.png", dpi=40)
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(TypeError, match="axes or a figure"):
        plots.save_figure("nope", tmp_path / "x.png")
