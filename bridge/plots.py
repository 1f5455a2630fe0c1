"""Figures for graphs, translations and benchmarks.

Every function imports matplotlib when called (never when ``bridge.plots`` is imported),
takes ``ax=None`` (a new figure when omitted) and returns the axes it drew on, like
networkx's ``nx_pylab``; :func:`plot_projection_before_after` returns its figure. Nodes are
told apart by the colour-blind-safe ``tab10`` palette. :func:`save_figure` writes a PNG
atomically.

- :func:`plot_projection` -- joint 2-D PCA/UMAP projection of several nodes of one space,
  with thin lines joining paired rows; :func:`plot_projection_before_after`;
- :func:`plot_gap_bars` -- gap metrics per node pair (rows of :func:`bridge.gap.gap_table`);
- :func:`plot_hops` -- reconstruction loss ``1 - cos`` against the number of hops;
- :func:`plot_r1_heatmap` -- node-by-node R@1;
- :func:`plot_prediction_scatter` -- predicted against measured route R@1;
- :func:`plot_graph` -- the modality graph, edges coloured by measured quality.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import DimensionMismatch, EmptyData, InvalidParameter, MissingExtra, UnknownNode
from .files import atomic_write_bytes
from .retrieval import l2_normalize
from .store import check_embeddings

__all__ = [
    "plot_projection",
    "plot_projection_before_after",
    "plot_gap_bars",
    "plot_hops",
    "plot_r1_heatmap",
    "plot_prediction_scatter",
    "plot_graph",
    "save_figure",
]

DEFAULT_GAP_METRICS = ("centroid_distance", "linear_separability", "linear_cka", "mutual_knn")

_METRIC_LABELS = {
    "centroid_distance": "centroid distance",
    "centroid_distance_raw": "centroid distance (raw)",
    "linear_separability": "linear separability",
    "linear_cka": "linear CKA",
    "mutual_knn": "mutual kNN",
    "alignment": "alignment",
    "uniformity_a": "uniformity (a)",
    "uniformity_b": "uniformity (b)",
}


# ---------------------------------------------------------------------------
# helpers


def _pyplot():
    """Import pyplot. The backend stays the user's choice (matplotlib itself falls back to
    Agg where no display is available)."""
    import matplotlib.pyplot as plt

    return plt


def _new_ax(ax, figsize):
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _palette(n: int) -> list:
    """``n`` distinct qualitative colours: tab10, then tab20 beyond ten."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _check_named(named: Mapping, what: str) -> dict[str, np.ndarray]:
    if not isinstance(named, Mapping) or not named:
        raise EmptyData(f"{what}: expected a non-empty dict of node name -> array, got {named!r}")
    return {str(k): check_embeddings(v, str(k)) for k, v in named.items()}


# ---------------------------------------------------------------------------
# projections


def _normalise_pairs(pairs, arrays: dict[str, np.ndarray]) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Turn the accepted pair specs into ``(name_a, name_b, rows_a, rows_b)``."""
    out = []
    for spec in pairs or ():
        if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3, 4):
            raise InvalidParameter(
                "pairs: expected (name_a, name_b), (name_a, name_b, Pairs) or "
                f"(name_a, name_b, rows_a, rows_b), got {spec!r}"
            )
        na, nb = str(spec[0]), str(spec[1])
        for nm in (na, nb):
            if nm not in arrays:
                raise UnknownNode(nm, arrays)
        if len(spec) == 2:
            if arrays[na].shape[0] != arrays[nb].shape[0]:
                raise DimensionMismatch(
                    f"pairs ({na!r}, {nb!r}) means row i pairs with row i, but {na!r} has "
                    f"{arrays[na].shape[0]} rows and {nb!r} has {arrays[nb].shape[0]}; pass "
                    "(name_a, name_b, rows_a, rows_b) index arrays instead"
                )
            ra = rb = np.arange(arrays[na].shape[0])
        elif len(spec) == 3:
            ra, rb = np.asarray(spec[2].a_rows), np.asarray(spec[2].b_rows)
        else:
            ra, rb = np.asarray(spec[2]), np.asarray(spec[3])
        ra, rb = ra.astype(np.int64).ravel(), rb.astype(np.int64).ravel()
        if ra.shape != rb.shape:
            raise DimensionMismatch(
                f"pairs ({na!r}, {nb!r}): {ra.size} rows of {na!r} but {rb.size} rows of {nb!r}"
            )
        for nm, r in ((na, ra), (nb, rb)):
            n = arrays[nm].shape[0]
            if r.size and (r.min() < -n or r.max() >= n):
                raise DimensionMismatch(f"pairs: row index out of range for {nm!r} with {n} rows")
            r %= n
        out.append((na, nb, ra, rb))
    return out


def _project(x: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, tuple[str, str]]:
    if method == "pca":
        from sklearn.decomposition import PCA

        n_comp = min(2, x.shape[1], x.shape[0])
        pca = PCA(n_components=n_comp, random_state=seed)
        y = pca.fit_transform(x)
        if n_comp < 2:
            y = np.pad(y, ((0, 0), (0, 2 - n_comp)))
        ev = list(pca.explained_variance_ratio_) + [0.0] * (2 - n_comp)
        return y, (f"PC 1 ({100 * ev[0]:.0f}% of variance)", f"PC 2 ({100 * ev[1]:.0f}% of variance)")
    if method == "umap":
        try:
            import umap  # noqa: F401
        except ImportError as e:
            raise MissingExtra("UMAP projection", extra="umap", package="umap-learn") from e
        import warnings

        reducer = umap.UMAP(
            n_components=2, n_neighbors=max(2, min(15, x.shape[0] - 1)), random_state=seed,
            metric="cosine",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n_jobs / random_state chatter
            y = reducer.fit_transform(x)
        return np.asarray(y), ("UMAP 1", "UMAP 2")
    raise InvalidParameter(f"unknown projection method {method!r}; expected 'pca' or 'umap'")


def plot_projection(
    named: Mapping[str, np.ndarray],
    pairs=None,
    method: str = "pca",
    n_lines: int = 50,
    seed: int = 0,
    ax=None,
    title: str | None = None,
    normalize: bool = True,
    max_points: int | None = 3000,
    colors: Mapping[str, object] | None = None,
    legend: bool = True,
    point_size: float | None = None,
):
    """Joint 2-D projection of several nodes, coloured by node, with paired rows joined.

    ``named`` maps node names to ``(rows, dim)`` arrays that live in **one** space (same
    ``dim``): a joint projection needs one space, so translate nodes into a common space
    first (the usual "before vs after translation" figure, see
    :func:`plot_projection_before_after`); different dims raise ``DimensionMismatch``.

    ``pairs`` lists which rows pair up: ``(name_a, name_b)`` (row i with row i),
    ``(name_a, name_b, rows_a, rows_b)`` index arrays, or ``(name_a, name_b, Pairs)``. A
    seeded sample of ``n_lines`` pairs per entry is joined by thin grey lines.
    ``method`` is ``"pca"`` (scikit-learn) or ``"umap"`` (needs the ``umap`` extra). Rows
    are L2-normalised first when ``normalize``; at most ``max_points`` rows per node are
    drawn (a seeded sample that keeps the rows of the drawn lines). Returns the axes.
    """
    arrays = _check_named(named, "plot_projection")
    _check_projection(arrays, method)
    prs = _normalise_pairs(pairs, arrays)
    rng = np.random.default_rng(seed)
    # choose the lines first, then the rows to draw (which always include the lines' ends)
    lines = _sample_lines(prs, n_lines, rng)
    keep = _sample_rows(arrays, lines, max_points, rng)
    proj, pos, (xl, yl) = _project_kept(arrays, keep, normalize, method, seed)

    ax = _new_ax(ax, (9, 6))
    _draw_pair_lines(ax, lines, proj, pos)
    s = _draw_node_points(ax, arrays, proj, colors, point_size)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(title if title is not None else f"Joint {method.upper()} projection")
    ax.autoscale_view()
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  frameon=False, markerscale=max(1.0, 30 / s) ** 0.5)
    return ax


def _check_projection(arrays: dict[str, np.ndarray], method: str) -> None:
    """Refuse nodes of different widths, an unknown ``method``, or UMAP without its
    package, before anything is computed."""
    dims = {k: v.shape[1] for k, v in arrays.items()}
    if len(set(dims.values())) > 1:
        shown = ", ".join(f"{k!r}: {d}" for k, d in dims.items())
        raise DimensionMismatch(
            f"plot_projection needs every node in one space (one dimension), got {shown}; "
            "translate the nodes into a common space first"
        )
    if method not in ("pca", "umap"):
        raise InvalidParameter(f"unknown projection method {method!r}; expected 'pca' or 'umap'")
    if method == "umap":
        try:
            import umap  # noqa: F401
        except ImportError as e:
            raise MissingExtra("UMAP projection", extra="umap", package="umap-learn") from e


def _sample_lines(prs, n_lines: int, rng) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """A sample of at most ``n_lines`` pairs of each entry of ``prs``, drawn from ``rng``
    in the order of the entries."""
    lines = []
    for na, nb, ra, rb in prs:
        take = rng.choice(ra.size, size=min(int(n_lines), ra.size), replace=False) if ra.size else []
        lines.append((na, nb, ra[take], rb[take]))
    return lines


def _sample_rows(arrays: dict[str, np.ndarray], lines, max_points: int | None,
                 rng) -> dict[str, np.ndarray]:
    """The rows to draw of each node: all of them up to ``max_points``, else a sample of
    ``max_points`` drawn from ``rng`` plus every row a line ends at (sorted, unique)."""
    need: dict[str, list[np.ndarray]] = {k: [] for k in arrays}
    for na, nb, ra, rb in lines:
        need[na].append(ra)
        need[nb].append(rb)
    keep = {}
    for name, x in arrays.items():
        n = x.shape[0]
        if max_points is None or n <= max_points:
            keep[name] = np.arange(n)
        else:
            base = rng.choice(n, size=max_points, replace=False)
            keep[name] = np.unique(np.concatenate([base, *need[name]]).astype(np.int64))
    return keep


def _project_kept(arrays, keep, normalize: bool, method: str, seed: int):
    """Project the kept rows of all nodes jointly. Returns ``(proj, pos, axis labels)``:
    ``proj[name]`` the 2-D points of the node's kept rows and ``pos[name]`` a lookup from
    a row of the node to its point (-1 for a row not kept)."""
    names = list(arrays)
    xs = [np.asarray(arrays[k][keep[k]], dtype=np.float64) for k in names]
    x = np.concatenate(xs)
    if normalize:
        x = l2_normalize(x, check=False)
    y, axis_labels = _project(x, method, seed)
    offsets = np.cumsum([0] + [len(v) for v in xs])
    proj = {k: y[offsets[i] : offsets[i + 1]] for i, k in enumerate(names)}
    pos = {}
    for k in names:
        lut = np.full(arrays[k].shape[0], -1, dtype=np.int64)
        lut[keep[k]] = np.arange(keep[k].size)
        pos[k] = lut
    return proj, pos, axis_labels


def _draw_pair_lines(ax, lines, proj, pos) -> None:
    """Join the points of the sampled pairs by thin grey lines (one collection)."""
    from matplotlib.collections import LineCollection

    segs = []
    for na, nb, ra, rb in lines:
        pa, pb = proj[na][pos[na][ra]], proj[nb][pos[nb][rb]]
        segs.extend(np.stack([pa, pb], axis=1))
    if segs:
        ax.add_collection(LineCollection(
            segs, colors="0.45", linewidths=0.6, alpha=0.6, zorder=1,
            label=f"paired rows (sample of {len(segs)})",
        ))


def _draw_node_points(ax, arrays, proj, colors, point_size) -> float:
    """One scatter per node, coloured from ``colors`` or the palette; returns the marker
    size used (``point_size``, else one that shrinks as the points grow in number)."""
    names = list(arrays)
    pal = _palette(len(names))
    total = sum(v.shape[0] for v in proj.values())
    s = point_size if point_size is not None else float(np.clip(6000 / max(total, 1), 5, 30))
    for i, k in enumerate(names):
        c = (colors or {}).get(k, pal[i])
        ax.scatter(proj[k][:, 0], proj[k][:, 1], s=s, color=c, alpha=0.7, linewidths=0,
                   label=f"{k} (n={arrays[k].shape[0]})", zorder=2)
    return s


def plot_projection_before_after(
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    pairs_before=None,
    pairs_after=None,
    method: str = "pca",
    n_lines: int = 50,
    seed: int = 0,
    titles: tuple[str, str] = ("Before translation", "After translation"),
    suptitle: str | None = None,
    figsize: tuple[float, float] = (13, 5.5),
    **kwargs,
):
    """Two joint projections side by side (before / after translation); returns the figure.

    Each panel follows :func:`plot_projection` (each dict must hold nodes of one space).
    Nodes keep their colour across panels by position (the i-th node of ``before`` and of
    ``after`` share a colour), and one legend per panel sits below it.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=figsize)
    n = max(len(before), len(after))
    pal = _palette(n)
    for ax, named, prs, t in ((axes[0], before, pairs_before, titles[0]),
                             (axes[1], after, pairs_after, titles[1])):
        cols = {str(k): pal[i] for i, k in enumerate(named)}
        plot_projection(named, pairs=prs, method=method, n_lines=n_lines, seed=seed, ax=ax,
                        title=t, colors=cols, legend=False, **kwargs)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False,
                  ncol=2, fontsize="small", markerscale=2.5)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# gap bars


def plot_gap_bars(
    rows: Sequence[Mapping],
    metrics: Sequence[str] = DEFAULT_GAP_METRICS,
    ax=None,
    title: str | None = "Modality gap per node pair",
    annotate: bool | None = None,
):
    """Grouped bar chart: one group per node pair (``row["pair"]``), one bar per metric.

    ``rows`` are dicts as returned by :func:`bridge.gap.gap_table`; a metric missing from
    a row (or NaN) draws no bar. Bars carry their values when there are at most 40.
    Returns the axes.
    """
    if not rows:
        raise EmptyData("plot_gap_bars: expected at least one row of gap metrics, got none")
    metrics = list(metrics)
    if not metrics:
        raise InvalidParameter("plot_gap_bars: expected at least one metric name")
    labels = []
    for i, r in enumerate(rows):
        if "pair" in r:
            labels.append(str(r["pair"]))
        elif "a" in r and "b" in r:
            labels.append(f"{r['a']} vs {r['b']}")
        else:
            labels.append(f"pair {i}")
    vals = np.array([[float(r.get(m, np.nan)) for m in metrics] for r in rows])
    if np.isnan(vals).all():
        raise InvalidParameter(
            f"plot_gap_bars: none of the metrics {metrics} is in the rows; their keys are "
            f"{sorted(set().union(*[set(r) for r in rows]))}"
        )
    n_pairs, n_met = vals.shape
    ax = _new_ax(ax, (max(6.0, 1.1 * n_pairs * max(1, n_met) / 2 + 3), 4.8))
    width = 0.8 / n_met
    x = np.arange(n_pairs)
    pal = _palette(n_met)
    n_bars = int(np.isfinite(vals).sum())
    if annotate is None:
        annotate = n_bars <= 40
    for j, m in enumerate(metrics):
        ok = np.isfinite(vals[:, j])
        xs = x[ok] + (j - (n_met - 1) / 2) * width
        bars = ax.bar(xs, vals[ok, j], width=width * 0.95, color=pal[j],
                      label=_METRIC_LABELS.get(m, m))
        if annotate:
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1.5)
    ax.set_xticks(x)
    rot = 0 if max(len(s) for s in labels) * n_pairs < 60 else 25
    ax.set_xticklabels(labels, rotation=rot, ha="right" if rot else "center",
                       rotation_mode="anchor")
    ax.set_xlabel("node pair")
    ax.set_ylabel("metric value")
    top = np.nanmax(vals)
    bottom = min(0.0, np.nanmin(vals))
    ax.set_ylim(bottom * 1.1, max(1.0, top) * 1.12)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")
    return ax


# ---------------------------------------------------------------------------
# hops


def _hop_stats(series, n_hops: int, what: str):
    """mean, q25, q75, std per hop for one series (arrays per hop, or scalar means)."""
    if isinstance(series, np.ndarray) and series.ndim == 2:
        series = list(series)
    if len(series) != n_hops:
        raise DimensionMismatch(f"{what}: {len(series)} loss entries for {n_hops} hops")
    mean, lo, hi, sd = [], [], [], []
    has_spread = False
    for v in series:
        v = np.asarray(v, dtype=np.float64).ravel()
        if v.size == 0:
            raise EmptyData(f"{what}: a hop with no loss values")
        mean.append(v.mean())
        if v.size > 1:
            has_spread = True
            lo.append(np.percentile(v, 25))
            hi.append(np.percentile(v, 75))
            sd.append(v.std())
        else:
            lo.append(v[0]); hi.append(v[0]); sd.append(0.0)
    return np.array(mean), np.array(lo), np.array(hi), np.array(sd), has_spread


def plot_hops(
    hops,
    losses,
    ax=None,
    labels: Sequence[str] | None = None,
    spread: str = "iqr",
    title: str | None = "Reconstruction loss against number of hops",
    ylabel: str = "reconstruction loss (1 − cos)",
):
    """Reconstruction loss ``1 - cos`` against the number of hops: mean and spread.

    ``losses`` is one series -- for each entry of ``hops``, an array of per-sample losses
    (or a scalar mean; a 2-D array ``(hops, samples)`` works too) -- or, with ``labels``
    (a list of series names), a list of such series; a dict ``{label: series}`` works too.
    ``spread`` is ``"iqr"`` (band between quartiles), ``"std"`` (error bars of one standard
    deviation) or ``"none"``. Returns the axes.
    """
    if spread not in ("iqr", "std", "none"):
        raise InvalidParameter(f"spread must be 'iqr', 'std' or 'none', got {spread!r}")
    hops = np.asarray(hops).ravel()
    if hops.size == 0:
        raise EmptyData("plot_hops: expected at least one hop count")
    if isinstance(losses, Mapping):
        labels, series = [str(k) for k in losses], list(losses.values())
    elif labels is not None:
        labels = [str(s) for s in labels]
        series = list(losses)
        if len(series) != len(labels):
            raise DimensionMismatch(
                f"plot_hops: {len(labels)} labels for {len(series)} series of losses"
            )
    else:
        series, labels = [losses], [None]
    ax = _new_ax(ax, (6.5, 4.5))
    pal = _palette(max(1, len(series)))
    band_drawn = False
    for i, (lab, s) in enumerate(zip(labels, series)):
        mean, lo, hi, sd, has_spread = _hop_stats(s, hops.size, f"plot_hops series {lab or i}")
        c = pal[i]
        if spread == "std" and has_spread:
            ax.errorbar(hops, mean, yerr=sd, color=c, marker="o", capsize=3,
                        label=lab or "mean ± 1 std")
        else:
            ax.plot(hops, mean, color=c, marker="o", label=lab or "mean")
        if spread == "iqr" and has_spread:
            ax.fill_between(hops, lo, hi, color=c, alpha=0.2, linewidth=0)
            band_drawn = True
    ax.set_xticks(np.unique(hops))
    ax.set_xlabel("number of hops")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    handles, labs = ax.get_legend_handles_labels()
    if band_drawn:
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="0.5", alpha=0.3, label="interquartile range"))
        labs.append("interquartile range")
    if len(series) > 1 or band_drawn or spread == "std":
        ax.legend(handles, labs, loc="best", fontsize="small")
    return ax


# ---------------------------------------------------------------------------
# heatmap


def plot_r1_heatmap(
    names: Sequence[str],
    matrix,
    ax=None,
    fmt: str = ".2f",
    title: str | None = "Recall@1 between nodes",
    col_names: Sequence[str] | None = None,
    cmap: str = "viridis",
    vmin: float = 0.0,
    vmax: float = 1.0,
    label: str = "R@1",
):
    """Node-by-node heatmap of R@1 (row: source node, column: target node).

    NaN cells (no route, the diagonal) are left blank. Cells carry their value formatted
    with ``fmt``. ``col_names`` names the columns when they differ from the rows.
    Returns the axes.
    """
    import matplotlib

    names = [str(n) for n in names]
    cols = names if col_names is None else [str(n) for n in col_names]
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (len(names), len(cols)):
        raise DimensionMismatch(
            f"plot_r1_heatmap: matrix has shape {m.shape}, expected ({len(names)}, {len(cols)}) "
            "for the names given"
        )
    if m.size == 0:
        raise EmptyData("plot_r1_heatmap: expected at least one node")
    n_r, n_c = m.shape
    size = (max(4.5, 0.75 * n_c + 3), max(3.5, 0.6 * n_r + 2))
    ax = _new_ax(ax, size)
    cm = matplotlib.colormaps[cmap].with_extremes(bad="white")
    masked = np.ma.masked_invalid(m)
    im = ax.imshow(masked, cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
    ax.figure.colorbar(im, ax=ax, label=label, fraction=0.046, pad=0.04)
    ax.set_xticks(np.arange(n_c))
    ax.set_yticks(np.arange(n_r))
    ax.set_xticklabels(cols, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(names)
    ax.set_xlabel("target node")
    ax.set_ylabel("source node")
    # thin white grid between cells
    ax.set_xticks(np.arange(n_c + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n_r + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    for sp in ax.spines.values():
        sp.set_visible(False)
    fs = 9 if max(n_r, n_c) <= 8 else 7 if max(n_r, n_c) <= 14 else 5
    for i in range(n_r):
        for j in range(n_c):
            v = m[i, j]
            if not np.isfinite(v):
                continue
            r, g, b, _ = cm(im.norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=fs,
                    color="white" if dark else "black")
    if title:
        ax.set_title(title)
    return ax


def plot_prediction_scatter(
    predicted,
    measured,
    sd=None,
    hops=None,
    baseline=None,
    ax=None,
    title: str | None = "predicted vs measured R@1",
    label: str = "calibrated",
    baseline_label: str = "uncalibrated exp(-cost)",
):
    """Predicted against measured R@1, one point per route, with the diagonal.

    ``sd`` draws each prediction's ±1.96 sd bar (its 95% interval); ``hops`` colours the
    points by the number of hops; ``baseline`` (another prediction of the same routes, such
    as the uncalibrated planner's ``exp(-cost)``) is drawn as grey crosses. The legend
    carries each prediction's mean absolute error. Returns the axes.
    """
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    m = np.asarray(measured, dtype=np.float64).reshape(-1)
    if p.shape != m.shape:
        raise DimensionMismatch(f"plot_prediction_scatter: {p.size} predictions for "
                                f"{m.size} measurements; expected one of each per route")
    if p.size == 0:
        raise EmptyData("plot_prediction_scatter: expected at least one route")
    extra = {"sd": sd, "hops": hops, "baseline": baseline}
    arrays = {}
    for name, v in extra.items():
        if v is None:
            continue
        a = np.asarray(v, dtype=np.float64).reshape(-1)
        if a.shape != p.shape:
            raise DimensionMismatch(f"plot_prediction_scatter: {name} has {a.size} values for "
                                    f"{p.size} routes")
        arrays[name] = a
    ax = _new_ax(ax, (5.5, 5.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", zorder=0)
    if "baseline" in arrays:
        b = arrays["baseline"]
        ax.scatter(b, m, marker="x", s=18, color="0.55", zorder=1,
                   label=f"{baseline_label} (MAE {np.mean(np.abs(b - m)):.3f})")
    if "sd" in arrays:
        ax.errorbar(p, m, xerr=1.96 * arrays["sd"], fmt="none", ecolor="0.75", elinewidth=0.8,
                    zorder=2)
    mae = np.mean(np.abs(p - m))
    if "hops" in arrays:
        hs = arrays["hops"].astype(int)
        levels = sorted(set(hs.tolist()))
        colors = _palette(max(len(levels), 1))
        for c, h in zip(colors, levels):
            sel = hs == h
            ax.scatter(p[sel], m[sel], s=22, color=c, zorder=3,
                       label=f"{label}, {h} hop{'s' if h != 1 else ''}")
        ax.plot([], [], " ", label=f"{label} MAE {mae:.3f}")
    else:
        ax.scatter(p, m, s=22, zorder=3, label=f"{label} (MAE {mae:.3f})")
    seen = np.concatenate([p, m] + ([arrays["baseline"]] if "baseline" in arrays else []))
    lo = max(0.0, math.floor((float(np.nanmin(seen)) - 0.02) * 10) / 10)
    ax.set_xlim(lo - 0.02, 1.02)
    ax.set_ylim(lo - 0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("predicted R@1")
    ax.set_ylabel("measured R@1")
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title)
    return ax


# ---------------------------------------------------------------------------
# graph


def _edge_value(weight, u, v, d):
    if callable(weight):
        val = weight(u, v, d)
    else:
        val = d.get(weight)
    if val is None:
        return None
    val = float(val)
    return val if np.isfinite(val) else None


def plot_graph(
    G,
    ax=None,
    weight="r1",
    pos=None,
    seed: int = 0,
    title: str | None = None,
    cmap: str = "viridis",
    vmin: float = 0.0,
    vmax: float = 1.0,
    edge_labels: bool = True,
    node_size: int = 900,
):
    """Draw the modality graph: nodes labelled, edges coloured and sized by quality.

    ``weight`` names the edge attribute holding the measured quality (held-out R@1 in
    ``[0, 1]`` by default), or is a function ``(u, v, data) -> float`` (networkx style).
    Edges without a value are drawn dashed grey. Nodes are coloured by their
    ``"modality"`` attribute when present. Two opposite directed edges between the same
    nodes are drawn as two arcs. Returns the axes.
    """
    import matplotlib

    if G.number_of_nodes() == 0:
        raise EmptyData("plot_graph: the graph has no nodes")
    ax = _new_ax(ax, (8, 6.5))
    pos = _graph_layout(G, pos, seed)
    mod_handles = _draw_graph_nodes(G, pos, ax, node_size)
    norm = matplotlib.colors.Normalize(vmin=vmin, vmax=vmax)
    cm = matplotlib.colormaps[cmap]
    measured, values, unmeasured = _split_edges(G, weight)
    _draw_graph_edges(G, pos, ax, measured, values, unmeasured, norm, cm, node_size,
                      edge_labels)
    _draw_node_labels(G, pos, ax, node_size)
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cm)
    sm.set_array([])
    wname = weight if isinstance(weight, str) else getattr(weight, "__name__", "edge quality")
    ax.figure.colorbar(sm, ax=ax, label=f"edge quality ({wname})", fraction=0.046, pad=0.02,
                      shrink=0.8)
    _graph_legend(ax, mod_handles, bool(unmeasured))
    ax.set_title(title if title is not None else
                 f"Modality graph: {G.number_of_nodes()} nodes, {G.number_of_edges()} edges")
    ax.margins(0.12)
    ax.set_axis_off()
    return ax


def _graph_layout(G, pos, seed: int) -> dict:
    """``pos`` when given (it must place every node), else a circle for up to two nodes
    and a Kamada-Kawai layout (spring layout as a fallback) beyond."""
    import networkx as nx

    if pos is None:
        if G.number_of_nodes() <= 2:
            pos = nx.circular_layout(G)
        else:
            try:
                pos = nx.kamada_kawai_layout(G.to_undirected())
            except Exception:  # pragma: no cover - scipy missing or degenerate graph
                pos = nx.spring_layout(G, seed=seed)
    missing = [n for n in G.nodes if n not in pos]
    if missing:
        raise UnknownNode(missing[0], pos)
    return pos


def _draw_graph_nodes(G, pos, ax, node_size: int) -> list:
    """Draw the nodes, coloured by their ``"modality"`` attribute when any has one;
    returns the legend handles of the modalities (none without them)."""
    import networkx as nx
    from matplotlib.lines import Line2D

    mods = [G.nodes[n].get("modality") for n in G.nodes]
    mod_handles = []
    if any(m is not None for m in mods):
        cats = sorted({str(m) for m in mods if m is not None})
        pal = dict(zip(cats, _palette(len(cats))))
        ncol = [pal[str(m)] if m is not None else "0.8" for m in mods]
        mod_handles = [Line2D([], [], marker="o", linestyle="", markersize=9,
                              markerfacecolor=pal[c], markeredgecolor="0.2", label=c)
                       for c in cats]
    else:
        ncol = ["#a6cee3"] * G.number_of_nodes()
    nx.draw_networkx_nodes(G, pos, ax=ax, node_color=ncol, node_size=node_size,
                           edgecolors="0.2", linewidths=1.0)
    return mod_handles


def _split_edges(G, weight):
    """``(measured, values, unmeasured)``: the edges with a finite ``weight`` value and
    those values, in edge order, and the edges without one."""
    measured, values, unmeasured = [], [], []
    for u, v, d in G.edges(data=True):
        val = _edge_value(weight, u, v, d)
        (unmeasured if val is None else measured).append((u, v))
        if val is not None:
            values.append(val)
    return measured, values, unmeasured


def _edge_style(G, u, v) -> str:
    """A bent arc for one of two opposite directed edges, a straight line otherwise."""
    if G.is_directed() and G.has_edge(v, u):
        return "arc3,rad=0.18"
    return "arc3,rad=0.0"


def _draw_graph_edges(G, pos, ax, measured, values, unmeasured, norm, cm, node_size,
                      edge_labels) -> None:
    """Draw the measured edges coloured and widened by value (labelled with it when
    ``edge_labels``), then the unmeasured ones dashed grey; arcs before straight lines."""
    import networkx as nx

    directed = G.is_directed()
    common = dict(ax=ax, node_size=node_size, arrows=True if directed else None)
    if directed:
        common.update(arrowstyle="-|>", arrowsize=16)
    for group, vals, kw in ((measured, values, {}), (unmeasured, None, {"style": "dashed"})):
        for style in ("arc3,rad=0.18", "arc3,rad=0.0"):
            es = [(u, v) for (u, v) in group if _edge_style(G, u, v) == style]
            if not es:
                continue
            if vals is not None:
                vs = [vals[group.index(e)] for e in es]
                colors = [cm(norm(x)) for x in vs]
                widths = [1.0 + 4.0 * float(np.clip(norm(x), 0, 1)) for x in vs]
            else:
                colors, widths = "0.6", 1.2
            ekw = dict(common, edgelist=es, edge_color=colors, width=widths, **kw)
            if directed:
                ekw["connectionstyle"] = style
            nx.draw_networkx_edges(G, pos, **ekw)
            if edge_labels and vals is not None:
                _draw_edge_values(G, pos, ax, es, vs, style if directed else None)


def _draw_edge_values(G, pos, ax, es, vs, connectionstyle) -> None:
    """Write each edge's value on it, in a small white box."""
    import networkx as nx

    lab = {e: f"{x:.2f}" for e, x in zip(es, vs)}
    lkw = dict(ax=ax, edge_labels=lab, font_size=7, label_pos=0.5,
               bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    if connectionstyle is not None:
        lkw["connectionstyle"] = connectionstyle
    nx.draw_networkx_edge_labels(G, pos, **lkw)


def _draw_node_labels(G, pos, ax, node_size: int) -> None:
    """Node names under their node, in a light box so that long names stay readable."""
    drop = np.sqrt(node_size) / 2 + 3  # marker radius in points, plus a gap
    for n in G.nodes:
        ax.annotate(
            str(n), xy=pos[n], xytext=(0, -drop), textcoords="offset points",
            ha="center", va="top", fontsize=8, zorder=5,
            bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.7", alpha=0.85),
        )


def _graph_legend(ax, mod_handles: list, has_unmeasured: bool) -> None:
    """One legend below the axes: the modalities, and "not measured" for dashed edges."""
    from matplotlib.lines import Line2D

    handles = list(mod_handles)
    if has_unmeasured:
        handles.append(Line2D([], [], color="0.6", linestyle="--", label="not measured"))
    if handles:
        ax.legend(handles=handles, title="modality" if mod_handles else None, loc="upper left",
                  bbox_to_anchor=(0.0, -0.02), ncol=min(4, len(handles)), frameon=False,
                  fontsize="small")


# ---------------------------------------------------------------------------
# saving


def save_figure(ax_or_fig, path, dpi: int = 150, **savefig_kw) -> Path:
    """Save the figure of ``ax_or_fig`` (axes, array of axes or figure) to ``path``.

    The layout is tightened, the image rendered in memory and written atomically (a
    temporary file in the same folder, then ``os.replace``), so a crash never leaves a
    half-written file. The format follows the suffix (``.png`` by default). Returns the path.
    """
    import warnings

    obj = ax_or_fig
    if isinstance(obj, np.ndarray):
        obj = obj.ravel()[0]
    elif isinstance(obj, (list, tuple)) and obj:
        obj = obj[0]
    fig = getattr(obj, "figure", None) if not hasattr(obj, "savefig") else obj
    if fig is None or not hasattr(fig, "savefig"):
        raise TypeError(f"save_figure: expected matplotlib axes or a figure, got {type(ax_or_fig)!r}")
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tight_layout on colourbars / outside legends
        try:
            fig.tight_layout()
        except Exception:  # pragma: no cover - layout is a nicety
            pass
    buf = io.BytesIO()
    savefig_kw.setdefault("bbox_inches", "tight")
    savefig_kw.setdefault("facecolor", "white")
    fig.savefig(buf, format=fmt, dpi=dpi, **savefig_kw)
    atomic_write_bytes(path, buf.getvalue())
    return path
