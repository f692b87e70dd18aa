"""The report's figures: pure plotting functions from plain arrays to a PNG file.

Matplotlib's object API on a bare ``Figure`` (Agg canvas) is used, never ``pyplot``: the report must not
change the caller's backend or leave figures open in an interactive session.

Conventions: time axes are in epochs on the CNN's clock with a symlog scale (linear below 1 epoch, so
t = 0 shows); accuracies in %, losses in nats; relaxed runs are coloured by their switch time t_w
(viridis, with a colourbar); CNN black, vanilla FCN grey dashed, vanilla LCN grey dotted.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogFormatter, NullLocator

from archrelax.store.atomic import atomic_write_bytes
from archrelax.store.results import GainRecord

DPI = 110
CMAP = colormaps["viridis"]
REF_STYLE = {  # reference runs trained without a switch
    "cnn": dict(color="black", ls="-", lw=2.0),
    "fcn": dict(color="0.45", ls="--", lw=1.8),
    "lcn": dict(color="0.45", ls=":", lw=2.0),
}
REF_NAME = {"cnn": "CNN", "fcn": "vanilla FCN", "lcn": "vanilla LCN", "efcn": "eFCN", "elcn": "eLCN",
            "hier": "CNN→eLCN→eFCN", "cont": "CNN continued", "wide": "wide conv", "tiled": "tiled conv",
            "soft": "soft eFCN", "path": "path", "attn": "attention"}


@dataclass
class Curve:
    """One run's time series; ``t_w`` None for a reference run (CNN, FCN, LCN)."""

    kind: str
    seed: int | None
    t_w: float | None
    epoch: Sequence[float]
    values: dict[str, Sequence[float]] = field(default_factory=dict)  # metric name -> values per epoch


def _figure(ncols: int = 1, nrows: int = 1, *, size: tuple[float, float] = (5.6, 4.0)) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    # rendered in memory, then written atomically: a full disk leaves no truncated PNG behind
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def tw_norm(t_ws: Sequence[float]) -> colors.Normalize:
    """Colour scale for switch times: symlog like the time axes, so early switches are told apart."""
    t_ws = [float(t) for t in t_ws] or [0.0, 1.0]
    lo, hi = min(t_ws), max(t_ws)
    if hi <= lo:
        hi = lo + 1.0
    return colors.SymLogNorm(linthresh=1.0, vmin=lo, vmax=hi, base=10)


def _time_axis(ax, label: str = "epoch (CNN's clock; symlog: linear below 1)") -> None:
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    lo, hi = ax.get_xlim()
    if lo < -0.15:  # times are never negative; symlog margins would show a "-1" tick
        ax.set_xlim(left=-0.15)
    # 1-2-5 ticks up to the last time, so a 4-epoch run is read as easily as a 400-epoch one
    steps = [0, 0.25, 0.5, 0.75] if hi < 3 else [0, 0.5]
    steps += list(range(1, 10)) if hi < 10 else [m * 10.0**e for e in range(0, 7) for m in (1, 2, 5)]
    ax.xaxis.set_major_locator(FixedLocator([t for t in steps if t <= hi]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(_PLAIN)  # "10", not "10^1": epochs read as numbers
    ax.set_xlabel(label)
    ax.grid(True, which="major", alpha=0.3)


_PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


class _PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of which minor ticks to label, with plain numbers."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def _log_y(ax) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PLAIN)
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))  # "3", "0.6", not "3×10^0", "6e-01"


def _colourbar(fig: Figure, axes, norm: colors.Normalize, ticks: Sequence[float],
               label: str = "switch time t_w (epochs)") -> None:
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=axes, label=label, shrink=0.9)
    ticks = sorted({float(t) for t in ticks})  # the switch times themselves, as plain numbers
    cb.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])


def training_curves(curves: Sequence[Curve], path: Path, *, title: str, relaxed_kind: str = "efcn") -> Path:
    """Training loss and test accuracy against time; relaxed runs start (marker) at their switch time."""
    fig, ax = _figure(2)
    loss_ax, acc_ax = ax[0]
    tws = [c.t_w for c in curves if c.t_w is not None]
    norm = tw_norm(tws)
    handles, seen = [], set()
    for c in sorted(curves, key=lambda c: (c.t_w is not None, c.t_w or 0.0)):
        x = np.asarray(c.epoch, dtype=float)
        loss = np.clip(np.asarray(c.values.get("train_loss", []), dtype=float), 1e-5, None)
        acc = 100 * np.asarray(c.values.get("test_acc", []), dtype=float)
        if c.t_w is None:
            style = dict(REF_STYLE.get(c.kind, REF_STYLE["fcn"]), zorder=3)  # references stay visible
        else:
            style = dict(color=CMAP(norm(c.t_w)), ls="-", lw=1.3)
        for a, y in ((loss_ax, loss), (acc_ax, acc)):
            if len(y) == len(x) and len(x):
                a.plot(x, y, alpha=0.9, **style)
                if c.t_w is not None:  # the switch: where the relaxed run leaves the CNN
                    a.plot(x[:1], y[:1], marker="o", ms=6, color=style["color"], mec="black", mew=0.6, zorder=4)
        if c.t_w is None and c.kind not in seen:
            seen.add(c.kind)
            style.pop("zorder")
            handles.append(Line2D([], [], label=REF_NAME.get(c.kind, c.kind), **style))
    if tws:
        handles.append(Line2D([], [], color=CMAP(0.6), marker="o", mec="black",
                              label=f"{REF_NAME.get(relaxed_kind, relaxed_kind)}(t_w); ● = switch"))
    _time_axis(loss_ax)
    _log_y(loss_ax)
    loss_ax.set_ylabel("training loss (nats, log scale)")
    loss_ax.set_title("training loss")
    _time_axis(acc_ax)
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.set_title("test accuracy")
    loss_ax.legend(handles=handles, loc="lower left", fontsize=8)
    if tws:
        _colourbar(fig, ax[0].tolist(), norm, tws)
    fig.suptitle(title)
    return _save(fig, path)


def _spread(n: int, *, up_to: bool = False) -> str:
    """What a point and its bar are: "mean ± std, 3 seeds", "mean ± std, up to 3 seeds", or "1 seed" (no bar)."""
    if n <= 1:
        return "1 seed"
    return f"mean ± std, {'up to ' if up_to else ''}{n} seeds"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=0)) if len(v) > 1 else 0.0


def final_vs_tw(points: dict[float, list[float]], refs: dict[str, list[float]], path: Path, *,
                title: str, ylabel: str = "final test accuracy (%)", label: str = "eFCN(t_w)",
                scale: float = 100.0, auto: dict[str, list[tuple[float, float]]] | None = None) -> Path:
    """Mean ± std over seeds of a final value against t_w, with reference runs as horizontal bands; ``auto``: rule ->
    [(chosen t_w, value)], one star per run whose switch time that rule chose."""
    fig, ax = _figure(1, size=(7.0, 4.4))
    a = ax[0, 0]
    tws = sorted(points)
    for kind, vals in refs.items():
        if not vals:
            continue
        m, s = _mean_std([scale * v for v in vals])
        style = REF_STYLE.get(kind, REF_STYLE["fcn"])
        a.axhline(m, color=style["color"], ls=style["ls"], lw=style["lw"],
                  label=f"{REF_NAME.get(kind, kind)} ({_spread(len(vals))})")
        if s > 0:
            a.axhspan(m - s, m + s, color=style["color"], alpha=0.12, lw=0)
    if tws:
        ms = [_mean_std([scale * v for v in points[t]]) for t in tws]
        n = max(len(points[t]) for t in tws)
        a.errorbar(tws, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", color="tab:blue", capsize=4,
                   label=f"{label} ({_spread(n, up_to=True)})")
    for i, (rule, pts) in enumerate((auto or {}).items()):
        a.scatter([t for t, _ in pts], [scale * v for _, v in pts], marker="*", s=160, zorder=5,
                  color=("tab:red", "tab:purple", "tab:brown")[i % 3], edgecolors="black", linewidths=0.5,
                  label=f"{label.replace('(t_w)', '')} at t_w = auto ({rule}; one ★ per seed)")
    _time_axis(a, "switch time t_w (epochs; symlog: linear below 1)")
    a.set_ylabel(ylabel)
    a.set_title(title)
    a.legend(fontsize=8, loc="best")
    return _save(fig, path)


def heatmap(tw1: Sequence[float], tw2: Sequence[float], acc: np.ndarray, path: Path, *, title: str,
            cnn_acc: float | None = None) -> Path:
    """Mean final test accuracy (%) of hierarchical runs, rows t_w1 (CNN→eLCN), columns t_w2 (eLCN→eFCN).

    ``acc``: (len(tw1), len(tw2)) fractions, NaN where no finished run exists.
    """
    fig, ax = _figure(1, size=(6.6, 5.0))
    a = ax[0, 0]
    data = 100 * np.ma.masked_invalid(np.asarray(acc, dtype=float))
    cmap = CMAP.with_extremes(bad="0.88")  # no finished run: light grey
    im = a.imshow(data, cmap=cmap, origin="lower", aspect="auto")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            dark = not np.ma.is_masked(v) and im.norm(v) < 0.6  # white text on viridis' dark end
            a.text(j, i, "—" if np.ma.is_masked(v) else f"{v:.1f}", ha="center", va="center", fontsize=10,
                   color="white" if dark else "black")
    a.set_xticks(range(len(tw2)), [f"{t:g}" for t in tw2])
    a.set_yticks(range(len(tw1)), [f"{t:g}" for t in tw1])
    a.set_xlabel("t_w2: eLCN → eFCN switch (epochs)")
    a.set_ylabel("t_w1: CNN → eLCN switch (epochs)")
    ref = f" (CNN: {100 * cnn_acc:.1f} %)" if cnn_acc is not None else ""
    a.set_title(title + ref)
    fig.colorbar(im, ax=a, label="final test accuracy (%); — = no finished run")
    return _save(fig, path)


def distance_figure(curves: Sequence[Curve], gains: Sequence[GainRecord], path: Path, *, title: str) -> Path:
    """Top: δ(t) (off-local norm ratio) and CNN distance(t) per run, coloured by t_w; bottom: final gain over
    the CNN against each final distance. eLCNs have no off-local weights (δ = 0): their escape shows in the
    CNN distance, which also counts unshared local weights. A hierarchical run is coloured by its last switch."""
    fig, ax = _figure(2, 2, size=(5.6, 3.6))
    tws = [c.t_w for c in curves if c.t_w is not None] + [g.switch for g in gains if g.switch is not None]
    norm = tw_norm(tws)
    dashes = {"efcn": "-", "elcn": "--", "hier": ":"}
    metrics = (("offlocal_ratio", "δ = off-local weight norm ratio"), ("cnn_distance", "distance to the CNN subspace"))
    for j, (key, name) in enumerate(metrics):
        a = ax[0, j]
        for c in curves:
            y = np.asarray(c.values.get(key, []), dtype=float)
            if len(y) != len(c.epoch) or not len(y):
                continue
            if c.t_w is None:  # a baseline trained from scratch (vanilla FCN/LCN): reference style
                a.plot(c.epoch, y, **REF_STYLE.get(c.kind, REF_STYLE["fcn"]))
                continue
            col = CMAP(norm(c.t_w))
            a.plot(c.epoch, y, color=col, lw=1.5, ls=dashes.get(c.kind, "-"))
            a.plot(c.epoch[:1], y[:1], marker="o", ms=6, color=col, mec="black", mew=0.6)
        kinds = {c.kind for c in curves}
        a.legend(handles=[Line2D([], [], color="0.3", ls=ls, label=REF_NAME[k]) for k, ls in dashes.items() if k in kinds]
                 + [Line2D([], [], label=REF_NAME[k], **REF_STYLE[k]) for k in ("fcn", "lcn") if k in kinds],
                 fontsize=8, loc="best")
        _time_axis(a)
        a.set_ylabel(f"{name.split(' = ')[0]} (relative norm)")
        a.set_title(f"{name}; ● = switch", fontsize=10)
        g_ax = ax[1, j]
        for marker, kind in (("o", "efcn"), ("s", "elcn"), ("^", "hier")):
            sel = [g for g in gains if g.kind == kind and getattr(g, f"final_{key}") is not None]
            if sel:
                g_ax.scatter([getattr(g, f"final_{key}") for g in sel], [100 * g.gain for g in sel],
                             c=[CMAP(norm(g.switch)) if g.switch is not None else "0.5" for g in sel],
                             marker=marker, s=40, edgecolors="black", linewidths=0.5, label=REF_NAME[kind])
        g_ax.axhline(0, color="black", lw=1, label="CNN (gain 0)")
        g_ax.set_xlabel(f"final {name.split(' = ')[0]} (relative norm)")
        g_ax.set_ylabel("gain over the CNN (% points)")
        g_ax.set_title(f"final gain against final {name.split(' = ')[0]}", fontsize=10)
        g_ax.grid(True, alpha=0.3)
        g_ax.legend(fontsize=8, loc="best")
    if tws:
        _colourbar(fig, ax.ravel().tolist(), norm, tws)
    fig.suptitle(title)
    return _save(fig, path)


def sharpness_along(epoch: Sequence[float], eig: Sequence[float], trace: Sequence[float],
                    trace_err: Sequence[float], switches: Sequence[float], path: Path, *, title: str,
                    eig_err: Sequence[float] | None = None, eig_ok: Sequence[bool] | None = None) -> Path:
    """Top Hessian eigenvalue and the trace along the CNN's trajectory, switch times marked.

    ``eig_err``: each λ_max's error bar (its residual bound, or the seeds' spread); ``eig_ok[i]`` False: no
    converged value at that epoch, drawn as a hollow marker off the line (not a measurement)."""
    fig, ax = _figure(2)
    ok = np.ones(len(epoch), bool) if eig_ok is None else np.asarray(eig_ok, bool)
    ep = np.asarray(epoch, float)
    for a, y, err, name, mask in ((ax[0, 0], eig, eig_err, "top Hessian eigenvalue λ_max (nats/param²)", ok),
                                  (ax[0, 1], trace, trace_err, "Hessian trace, Hutchinson (nats/param²)", None)):
        y = np.asarray(y, float)
        e = None if err is None else np.asarray(err, float)
        m = np.ones(len(y), bool) if mask is None else mask
        a.errorbar(ep[m], y[m], yerr=None if e is None else e[m], marker="o", color="black", capsize=3,
                   label="CNN" + (" (bars: residual bound or seeds' sd)" if mask is not None else " (bars: sd)"))
        if (~m).any():
            a.plot(ep[~m], y[~m], ls="none", marker="o", mfc="none", mec="black", label="not converged")
        for i, s in enumerate(switches):
            a.axvline(s, color="tab:blue", ls=":", lw=1, alpha=0.7, label="switch times t_w" if i == 0 else None)
        _time_axis(a)
        a.set_ylabel(name)
        a.set_title(name.split(" (")[0] + " along the CNN")
        a.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    return _save(fig, path)


def sharpness_curve(curves: Sequence[tuple[int, Sequence[float], Sequence[float], Sequence[bool]]],
                    switches: Sequence[float], path: Path, *, title: str,
                    snapshots: tuple[Sequence[float], Sequence[float]] | None = None) -> Path:
    """The CNN's λ_max at every evaluation, one line per seed (``curves``: (seed, epochs, values, converged)),
    switch times marked. A value that did not converge is a hollow marker off the line (not a measurement);
    ``snapshots``: (epochs, values) of the snapshot analysis's converged λ_max, for comparison."""
    fig, ax = _figure(1)
    a = ax[0, 0]
    pal = colormaps["tab10"]
    for i, (seed, ep, y, ok) in enumerate(curves):
        ep, y, m = np.asarray(ep, float), np.asarray(y, float), np.asarray(ok, bool)
        a.plot(ep[m], y[m], marker=".", ms=4, lw=1, color=pal(i % 10), label=f"seed {seed}")
        if (~m).any():
            a.plot(ep[~m], y[~m], ls="none", marker="o", mfc="none", mec=pal(i % 10),
                   label="not converged" if i == 0 else None)
    if snapshots is not None and len(snapshots[0]):
        a.plot(snapshots[0], snapshots[1], ls="none", marker="s", mfc="none", mec="black", ms=7,
               label="snapshot analysis (mean over seeds)")
    for i, s in enumerate(switches):
        a.axvline(s, color="tab:blue", ls=":", lw=1, alpha=0.7, label="switch times t_w" if i == 0 else None)
    _time_axis(a)
    a.set_ylabel("top Hessian eigenvalue λ_max (nats/param²)")
    a.set_title("λ_max along the CNN's training (every evaluation)")
    a.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    return _save(fig, path)


def sharpness_ends(points: dict[str, dict[float, list[float]]], refs: dict[str, list[float]],
                   path: Path, *, title: str, ylabel: str,
                   unconverged: dict[str, list[tuple[float, float]]] | None = None) -> Path:
    """A final sharpness value against t_w per relaxed kind (mean ± std), reference runs as bands; values that
    did not converge (``unconverged``: kind -> [(t_w, value)]) as hollow markers, out of the means."""
    fig, ax = _figure(1, size=(7.0, 4.4))
    a = ax[0, 0]
    for kind, vals in refs.items():
        if vals:
            m, s = _mean_std(vals)
            st = REF_STYLE.get(kind, REF_STYLE["fcn"])
            a.axhline(m, color=st["color"], ls=st["ls"], lw=st["lw"], label=f"{REF_NAME.get(kind, kind)} end")
            if s > 0:
                a.axhspan(m - s, m + s, color=st["color"], alpha=0.12, lw=0)
    cols = dict(zip(list(dict.fromkeys([*points, *(unconverged or {})])), ("tab:blue", "tab:orange", "tab:green",
                                                                             "tab:red", "tab:purple")))
    for kind, pts in points.items():
        tws = sorted(t for t in pts if pts[t])
        ms = [_mean_std(pts[t]) for t in tws]
        a.errorbar(tws, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", color=cols[kind], capsize=4,
                   label=f"{REF_NAME.get(kind, kind)}(t_w) end (mean ± std)")
    bad = [v for vs in (unconverged or {}).values() for _, v in vs]
    for kind, vs in (unconverged or {}).items():
        if vs:
            a.plot([t for t, _ in vs], [v for _, v in vs], ls="none", marker="o", mfc="none", mec=cols[kind],
                   label=f"{REF_NAME.get(kind, kind)} not converged (left out)")
    _time_axis(a, "switch time t_w (epochs; symlog: linear below 1)")
    every = [v for d in points.values() for vs in d.values() for v in vs] + [v for vs in refs.values() for v in vs] + bad
    if every and min(every) > 0:  # sharpness spans decades; a noisy negative trace estimate forbids log
        _log_y(a)
        ylabel += ", log scale"
    a.set_ylabel(ylabel)
    a.set_title(title)
    a.legend(fontsize=8, loc="best")
    return _save(fig, path)


def ablation_bars(labels: Sequence[str], acc: dict[str, Sequence[float]], err: dict[str, Sequence[float]],
                  path: Path, *, title: str, chance: float | None = None) -> Path:
    """Grouped bars: test accuracy (%) with both parts, local part only, off-local part only."""
    fig, ax = _figure(1, size=(min(11.0, max(6.0, 0.75 * len(labels) + 2)), 4.4))  # capped: fonts stay readable
    a = ax[0, 0]
    x = np.arange(len(labels))
    width = 0.27
    for i, (part, col) in enumerate((("both", "tab:blue"), ("local", "tab:green"), ("offlocal", "tab:red"))):
        a.bar(x + (i - 1) * width, [100 * v for v in acc[part]], width, yerr=[100 * v for v in err[part]],
              color=col, capsize=3, label={"both": "both parts", "local": "local part only",
                                           "offlocal": "off-local part only"}[part])
    if chance is not None:
        a.axhline(100 * chance, color="black", ls=":", lw=1, label="chance")
    a.set_xticks(x, labels, rotation=20, ha="right")
    a.set_xlabel("run (switch time t_w in epochs)")
    a.set_ylabel("test accuracy (%)")
    a.set_title(title)
    fig.legend(fontsize=8, loc="outside right upper")  # beside the axes: bars fill the whole height
    a.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def template_grid(rows: Sequence[tuple[str, np.ndarray, Sequence[int]]], path: Path, *, title: str) -> Path:
    """Rows of unit templates; each row ``(label, images (K, C, H, W) in [0, 1], unit indices)``.

    The images are tiled into one mosaic (white gutters) and drawn with a single ``imshow``: one axes
    instead of rows × units keeps this figure as cheap as the others.
    """
    ncols = max(len(imgs) for _, imgs, _ in rows)
    c, h, w = np.asarray(rows[0][1]).shape[1:]
    gap = max(1, h // 8)
    mosaic = np.ones(((h + gap) * len(rows) - gap, (w + gap) * ncols - gap, 3))  # (H', W', RGB)
    for r, (_, imgs, _) in enumerate(rows):
        for k, img in enumerate(np.clip(np.asarray(imgs, dtype=float), 0, 1)):  # img: (C, H, W)
            rgb = img.transpose(1, 2, 0) if img.shape[0] == 3 else np.repeat(img[:1].transpose(1, 2, 0), 3, 2)
            mosaic[r * (h + gap):r * (h + gap) + h, k * (w + gap):k * (w + gap) + w] = rgb[:h, :w]
    fig, ax = _figure(1, size=(1.25 * ncols + 2.0, 1.25 * len(rows) + 0.9))
    a = ax[0, 0]
    a.imshow(mosaic, interpolation="nearest")
    a.set_xticks([k * (w + gap) + w / 2 for k in range(ncols)],
                 [f"unit {u}" for u in rows[0][2][:ncols]] + [""] * (ncols - len(rows[0][2][:ncols])), fontsize=8)
    a.xaxis.tick_top()
    a.set_yticks([r * (h + gap) + h / 2 for r in range(len(rows))], [lab for lab, _, _ in rows], fontsize=9)
    a.tick_params(length=0)
    for side in a.spines.values():
        side.set_visible(False)
    a.set_xlabel(f"hidden units of the first relaxed layer (same indices in every row); {h}×{w} input pixels each")
    fig.suptitle(title)
    return _save(fig, path)


def interpolation_figure(alphas: Sequence[float], curves: Sequence[dict], path: Path, *, title: str) -> Path:
    """Loss (nats) and accuracy (%) along α for each method (columns); train solid, test dashed."""
    methods = [m for m in ("linear", "curvilinear", "output") if any(c["method"] == m for c in curves)]
    fig, ax = _figure(len(methods), 2, size=(4.8, 3.4))
    palette = colormaps["tab10"]
    keys = list(dict.fromkeys(c["label"] for c in curves))
    for j, method in enumerate(methods):
        for c in (c for c in curves if c["method"] == method):
            col = palette(keys.index(c["label"]) % 10)
            for i, (metric, scale) in enumerate((("loss", 1.0), ("acc", 100.0))):
                for split, ls in (("train", "-"), ("test", "--")):
                    y = c.get(f"{split}_{metric}")
                    if y is not None and len(y) == len(alphas):
                        ax[i, j].plot(alphas, scale * np.asarray(y, dtype=float), ls=ls, color=col, lw=1.4)
        ax[0, j].set_title(f"{method} interpolation")
        ax[0, j].set_ylabel("loss (nats)")
        ax[1, j].set_ylabel("accuracy (%)")
        for i in range(2):
            ax[i, j].set_xlabel("α (0 = start, 1 = end)")
            ax[i, j].grid(True, alpha=0.3)
    handles = [Line2D([], [], color=palette(k % 10), label=lab) for k, lab in enumerate(keys)]
    handles += [Line2D([], [], color="black", ls="-", label="train"),
                Line2D([], [], color="black", ls="--", label="test")]
    fig.legend(handles=handles, fontsize=8, loc="outside right upper")  # beside the panels, never over a curve
    fig.suptitle(title)
    return _save(fig, path)


# ---- the lattice: corners at each switch time, soft schedules, distances per corner ----------------------------

CORNER_COLOURS = colormaps["tab10"]


def lattice_figure(corners: Sequence[str], points: dict[str, dict[float, list[float]]],
                   memory: dict[str, int | None], path: Path, *, title: str,
                   cnn_final: Sequence[float] = ()) -> Path:
    """Left: final test accuracy (%) of each corner against t_w (mean ± std over seeds); the CNN trained to its
    end as a band. Right: parameter memory of each corner (MiB, log scale, each bar labelled with its size and its
    ratio to the smallest; absent when not measured)."""
    fig, ax = _figure(2, size=(6.0, 4.4))
    a, m = ax[0]
    if cnn_final:
        mu, sd = _mean_std([100 * v for v in cnn_final])
        st = REF_STYLE["cnn"]
        a.axhline(mu, color=st["color"], ls=":", lw=1.5, label=f"CNN at its end ({len(cnn_final)} seed"
                  f"{'s' * (len(cnn_final) > 1)})")
        if sd > 0:
            a.axhspan(mu - sd, mu + sd, color="black", alpha=0.08, lw=0)
    for i, c in enumerate(corners):
        pts = points.get(c) or {}
        tws = sorted(pts)
        if not tws:
            continue
        ms = [_mean_std([100 * v for v in pts[t]]) for t in tws]
        a.errorbar(tws, [x for x, _ in ms], yerr=[e for _, e in ms], marker="os^Dv<>ph*"[i % 10], capsize=4,
                   color=CORNER_COLOURS(i % 10), label=c)
    _time_axis(a, "switch time t_w (epochs; symlog: linear below 1)")
    a.set_ylabel("final test accuracy (%)")
    a.set_title("final test accuracy of each corner")
    a.legend(fontsize=8, loc="best")
    known = [(i, c, memory.get(c)) for i, c in enumerate(corners) if memory.get(c)]
    if known:
        mib = [b / 2**20 for _, _, b in known]
        m.barh([c for _, c, _ in known], mib, color=[CORNER_COLOURS(i % 10) for i, _, _ in known])
        # a log axis spans the corners' range (the eFCN's memory is hundreds of times the CNN's) but misreads ratios:
        # each bar says its size and its ratio to the smallest corner, which is what a reader compares
        small = min(mib)
        for y, v in enumerate(mib):
            m.text(v, y, f" {v:,.3g} MiB" + (f" ({v / small:.3g}×)" if v > small * 1.0005 else ""), va="center",
                   fontsize=7)
        m.set_xscale("log")
        m.set_xlim(min(mib) / 2, max(mib) * 40)  # room for the labels right of the longest bar
        m.xaxis.set_major_formatter(_PLAIN)
        m.invert_yaxis()
        m.tick_params(axis="y", labelsize=8)
        m.set_xlabel("parameter memory (MiB, log scale; × = ratio to the smallest)")
        m.grid(True, axis="x", alpha=0.3)
    else:
        m.text(0.5, 0.5, "memory not measured\n(the memory analysis)", ha="center", va="center",
               transform=m.transAxes)
        m.set_axis_off()
    m.set_title("parameter memory of each corner")
    fig.suptitle(title)
    return _save(fig, path)


def soft_figure(groups: Sequence[str], points: dict[str, dict[float, list[float]]],
                lam: dict[str, tuple[Sequence[float], Sequence[float]]], refs: dict[str, dict[float, list[float]]],
                path: Path, *, title: str) -> Path:
    """Left: λ(t) of each soft group over its own epochs (from the metrics). Right: final test accuracy (%)
    against t_w of each group (mean ± std over seeds), the hard relaxation (λ = 0) and the CNN continued (the
    λ → ∞ limit) as references."""
    fig, ax = _figure(2, size=(5.8, 4.2))
    l_ax, a = ax[0]
    for i, g in enumerate(groups):
        x, y = lam.get(g, ((), ()))
        if len(x):
            l_ax.plot(x, y, marker="o", ms=3, color=CORNER_COLOURS(i % 10), label=g)
    l_ax.set_xlabel("epochs after the switch")
    l_ax.set_ylabel("λ(t)")
    l_ax.set_title("λ schedules (from the metrics)")
    l_ax.grid(True, alpha=0.3)
    if groups:
        l_ax.legend(fontsize=8, loc="best")
    styles = {0: dict(color="0.3", ls="--"), 1: dict(color="black", ls=":")}
    for k, (name, pts) in enumerate(refs.items()):
        tws = sorted(pts)
        if tws:
            ms = [_mean_std([100 * v for v in pts[t]]) for t in tws]
            a.errorbar(tws, [x for x, _ in ms], yerr=[e for _, e in ms], capsize=3, lw=1.5, label=name,
                       **styles[k % 2])
    for i, g in enumerate(groups):
        tws = sorted(points.get(g) or {})
        if tws:
            ms = [_mean_std([100 * v for v in points[g][t]]) for t in tws]
            a.errorbar(tws, [x for x, _ in ms], yerr=[e for _, e in ms], marker="o", capsize=4,
                       color=CORNER_COLOURS(i % 10), label=g)
    _time_axis(a, "switch time t_w (epochs; symlog: linear below 1)")
    a.set_ylabel("final test accuracy (%)")
    a.set_title("final test accuracy against the schedule")
    a.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    return _save(fig, path)


def corner_distance_figure(corners: Sequence[str], curves: dict[str, list[tuple[Sequence[float], Sequence[float],
                                                                                 Sequence[float] | None]]],
                           path: Path, *, title: str) -> Path:
    """δ(t) (left) and the off-sharing ratio (right) of every run, coloured by corner, against epochs on the
    CNN's clock; ``curves[corner]``: ``(epochs, δ, off-sharing or None when not recorded)`` per run."""
    fig, ax = _figure(2, size=(5.6, 4.0))
    for i, c in enumerate(corners):
        col = CORNER_COLOURS(i % 10)
        for j, (x, d, o) in enumerate(curves.get(c, [])):
            for a, y in ((ax[0, 0], d), (ax[0, 1], o)):
                if y is not None and len(y) == len(x) and len(x):
                    a.plot(x, y, color=col, lw=1.3, alpha=0.85, label=c if j == 0 else None)
                    a.plot(x[:1], y[:1], marker="o", ms=5, color=col, mec="black", mew=0.5)
    for a, name in ((ax[0, 0], "δ = ‖off-local‖ / ‖θ‖"), (ax[0, 1], "off-sharing = ‖local − shared‖ / ‖θ‖")):
        _time_axis(a)
        a.set_ylabel(name.split(" = ")[0] + " (relative norm)")
        a.set_title(name + "; ● = switch", fontsize=10)
        if a.lines:
            a.legend(fontsize=8, loc="best")
        else:
            a.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=a.transAxes)
    fig.suptitle(title)
    return _save(fig, path)


# the attention runs' measures (metrics.jsonl keys, embed.attention_measures.MEASURE_KEYS), one panel each
ATTENTION_PANELS = (
    ("attn_offtarget", "off-target share", "attention mass off the conv's tap (δ-like; log, floored at 1e-12)", True),
    ("attn_content_share", "content share", "½‖A − A_pos‖₁: attention that is content-based (log, floored)", True),
    ("attn_mean_distance", "mean distance (input pixels)", "attention-weighted key distance to the receptive field's "
     "centre (ConViT's nonlocality)", False),
    ("attn_alpha_mean", "α (mean; band: min-max over heads)", "positional sharpness α", False),
    ("attn_offset_mean", "‖offset‖ (mean; dashed: max), input pixels", "how far the heads' focus moved", False),
)
LOG_FLOOR = 1e-12


def attention_figure(labels: Sequence[str], curves: dict[str, list[Curve]], path: Path, *, title: str) -> Path:
    """The attention runs' distance from their conv over training, one panel per measure of
    :data:`ATTENTION_PANELS`, every run coloured by its label (its target), ● at the switch (where each measure is
    the conv's own, up to the leak e^(−α/2)). ``curves[label]``: the runs (``values`` keyed by the metrics' names)."""
    fig, ax = _figure(3, 2, size=(5.0, 3.6))
    axes = ax.reshape(-1)
    for k, (key, ylabel, what, log) in enumerate(ATTENTION_PANELS):
        a = axes[k]
        for i, label in enumerate(labels):
            col = CORNER_COLOURS(i % 10)
            for j, c in enumerate(curves.get(label, [])):
                y = c.values.get(key)
                if y is None or len(y) != len(c.epoch) or not len(y):
                    continue
                x, y = np.asarray(c.epoch, float), np.asarray(y, float)
                if log:
                    y = np.maximum(y, LOG_FLOOR)
                a.plot(x, y, color=col, lw=1.3, alpha=0.85, label=label if j == 0 else None)
                a.plot(x[:1], y[:1], marker="o", ms=5, color=col, mec="black", mew=0.5)
                lo, hi = (c.values.get(f"attn_alpha_{s}") for s in ("min", "max")) if key == "attn_alpha_mean" else (None, None)
                if lo is not None and hi is not None and len(lo) == len(x) == len(hi):
                    a.fill_between(x, lo, hi, color=col, alpha=0.15, lw=0)
                top = c.values.get("attn_offset_max") if key == "attn_offset_mean" else None
                if top is not None and len(top) == len(x):
                    a.plot(x, top, color=col, lw=1.0, ls="--", alpha=0.7)
        _time_axis(a)
        if log and a.lines:
            a.set_yscale("log")
        a.set_ylabel(ylabel)
        a.set_title(what + "; ● = switch", fontsize=8)
        if not a.lines:
            a.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=a.transAxes)
    handles = [h for h in axes[0].get_legend_handles_labels()[0]]
    axes[-1].axis("off")
    if handles:
        axes[-1].legend(handles=handles, loc="center", fontsize=8, title="runs")
    fig.suptitle(title)
    return _save(fig, path)
