"""A small synthetic experiment folder for the report tests, written by hand after docs/architecture.md
(experiment folder, run folder, summary.csv and analysis caches), with fake but plausible numbers."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

EVAL = np.unique(np.round(np.concatenate([[0.0], np.geomspace(0.1, 40.0, 14)]), 3))
TWS = (0.0, 1.0, 4.0, 16.0)
LATTICE_TWS = (1.0, 4.0)
# the lattice's runs (kind, target, soft λ): the CNN continued, locality released, sharing released in tiles, a
# soft eFCN; beside the eFCN and eLCN runs above, they are the corners at each switch time
LATTICE = (("cont", None, 0.0), ("wide", "wide:full", 0.0), ("tiled", "tiled:2", 0.0), ("soft", "fc", 10.0))


def _cnn(t: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    loss = 2.3 * np.exp(-t / 4.0) + 1e-3
    acc = 0.1 + 0.5 * (1 - np.exp(-t / 3.0)) + 0.005 * seed
    return loss, acc


def _relaxed(t: np.ndarray, t_w: float, seed: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    loss0, acc0 = _cnn(np.array([t_w]), seed)
    bump = 0.06 * np.exp(-((np.log1p(t_w) - np.log1p(4.0)) ** 2)) * (1.0 if kind == "efcn" else 0.5)
    s = np.clip(t - t_w, 0, None)
    loss = (loss0 - 1e-3) * np.exp(-s / 3.0) + 1e-3  # starts exactly at the CNN's loss: no jump
    acc = acc0 + (0.6 + bump - acc0) * (1 - np.exp(-s / 3.0))
    delta = 0.4 / (1 + t_w) * (1 - np.exp(-s / 2.0))
    return loss, acc, delta


def _run_folder(d: Path, kind: str, seed: int, t_w: float | None, t_w2: float | None, status: str,
                error: str | None = None, offsharing: bool = True) -> dict:
    d.mkdir(parents=True)
    start = t_w2 if kind == "hier" else t_w
    t = EVAL if start is None else np.concatenate([[start], EVAL[EVAL > start]])
    if status == "failed":
        t = t[:3]
    if kind in ("cnn", "fcn", "lcn", "cont"):
        loss, acc = _cnn(t, seed)
        if kind in ("fcn", "lcn"):
            acc = 0.1 + (acc - 0.1) * (0.75 if kind == "fcn" else 0.9)
        delta = None
    else:
        loss, acc, delta = _relaxed(t, start, seed, "efcn" if kind in ("hier", "soft", "wide", "tiled") else kind)
    # δ and the distance to the CNN of each kind: a wide conv releases locality only (off-sharing 0), a tiled
    # conv sharing only (δ 0), a soft run less of both; off-sharing² = cnn_distance² − δ² (zero padding)
    scale = {"wide": (1.0, 1.0), "tiled": (0.0, 1.5), "soft": (0.2, 0.4)}.get(kind, (1.0, 2.0))
    lines = []
    for i, e in enumerate(t):
        rec = {"epoch": float(e - (start or 0.0)), "global_epoch": float(e), "step": int(round((e - (start or 0.0)) * 20)),
               "train_loss": float(loss[i]),
               "train_acc": float(min(1.0, acc[i] + 0.3)), "test_loss": float(loss[i] + 0.8),
               "test_acc": float(acc[i]), "lr": 0.1, "wall_time": float(e), "peak_mem_bytes": 1000}
        if delta is not None:
            rec["offlocal_ratio"] = float(scale[0] * delta[i])
            rec["cnn_distance"] = float(scale[1] * delta[i])
            if offsharing:  # as the trainer records it (a stand-in from the identity above)
                rec["offsharing_ratio"] = float(np.sqrt(max(scale[1] ** 2 - scale[0] ** 2, 0.0)) * delta[i])
        if kind == "soft":
            rec["soft_lambda"] = float(10.0 * 2 ** (-(e - start) / 0.5))
            rec["soft_penalty"] = float(scale[1] * delta[i])
        lines.append(json.dumps(rec))
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n" + ('{"epoch": 99, "trunc' if status == "running" else ""))
    (d / "status.json").write_text(json.dumps({"status": status, "error": error, "epoch": float(t[-1]),
                                               "updated": "2026-11-28T11:00:00+00:00"}))
    (d / "config.json").write_text(json.dumps({"model": "vanilla_cnn", "seed": seed}))
    return {"id": d.name, "kind": kind, "seed": seed, "t_w": t_w, "t_w2": t_w2, "status": status,
            "epochs": float(t[-1]), "final_train_acc": float(min(1.0, acc[-1] + 0.3)), "final_test_acc": float(acc[-1]),
            "best_test_acc": float(acc.max()), "final_train_loss": float(loss[-1]),
            "final_test_loss": float(loss[-1] + 0.8), "final_offlocal_ratio": None if delta is None else float(delta[-1])}


def plan_entries(seeds: int = 2) -> dict[str, dict]:
    """plan.json as archrelax.protocol writes it: id -> {kind, seed, config, depends_on, snapshot, t_w, t_w2}."""
    plan = {}

    def add(rid: str, kind: str, seed: int, parent: str | None = None, snap: float | None = None,
            t_w: float | None = None, t_w2: float | None = None) -> None:
        plan[rid] = {"kind": kind, "seed": seed, "config": {"seed": seed}, "depends_on": parent,
                     "snapshot": None if parent is None else f"runs/{parent}/snapshots/epoch_{snap:g}.pt",
                     "snapshot_epoch": snap, "t_w": t_w, "t_w2": t_w2, "identity": "x"}

    for s in range(seeds):
        add(f"cnn-s{s}", "cnn", s)
        add(f"fcn-s{s}", "fcn", s)
        for t in TWS:
            add(f"efcn-t{t:g}-s{s}", "efcn", s, f"cnn-s{s}", t, t_w=t)
        for kind, target, lam in LATTICE:
            for t in LATTICE_TWS:
                add(f"{kind}-t{t:g}-s{s}", kind, s, f"cnn-s{s}", t, t_w=t)
                plan[f"{kind}-t{t:g}-s{s}"]["config"] |= {"relax": target, "soft_lambda": lam, "soft_schedule":
                                                          "exp:0.5" if lam else "const", "soft_toward": "cnn"}
        for t in TWS:  # the hard relaxations: their targets, for the lattice's labels
            plan[f"efcn-t{t:g}-s{s}"]["config"] |= {"relax": "fc", "soft_lambda": 0.0}
    add("lcn-s0", "lcn", 0)
    for t in (1.0, 4.0):
        add(f"elcn-t{t:g}-s0", "elcn", 0, "cnn-s0", t, t_w=t)
    for t1, t2 in ((1.0, 4.0), (1.0, 16.0), (4.0, 16.0)):
        add(f"hier-t{t1:g}-{t2:g}-s0", "hier", 0, f"elcn-t{t1:g}-s0", t2 - t1, t_w=t1, t_w2=t2)
    return plan


# the analyses its spec asks for (the report draws a section for each, and notes the ones not computed yet)
ANALYSES = ("memory", "distance", "sharpness", "ablation", "templates", "interpolation")


def make_experiment(root: Path, *, partial: bool = False) -> Path:
    """Write the folder; ``partial``: some runs never started, one failed, one running, fewer analyses."""
    exp = Path(root)
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "spec.yaml").write_text("name: synthetic\nmodel: vanilla_cnn\ndata: mnist5k\nseeds: 2\n"
                                   f"t_w: {list(TWS)}\nanalyses: [{', '.join(ANALYSES)}]\n")
    plan = plan_entries()
    (exp / "plan.json").write_text(json.dumps(plan, indent=1))
    rows = []
    for rid, e in plan.items():
        t_w, t_w2 = e["t_w"], e["t_w2"]
        status, error = "done", None
        if partial and rid in ("efcn-t16-s1", "hier-t4-16-s0", "fcn-s1"):
            continue  # never started: no folder, no summary row
        if partial and rid == "efcn-t0-s1":
            status, error = "failed", "Traceback (most recent call last):\n  ...\nRuntimeError: loss is NaN at step 40"
        if partial and rid == "efcn-t4-s1":
            status = "running"
        rows.append(_run_folder(exp / "runs" / rid, e["kind"], e["seed"], t_w, t_w2, status, error,
                                offsharing=not partial))
    with open(exp / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _analyses(exp, [r for r in rows if r["status"] == "done"], partial)
    return exp


def _common(name: str, missing: list[dict]) -> dict:
    return {"analysis": name, "version": 1, "params": {}, "fingerprint": "0" * 16,
            "created": "2026-11-28T11:00:00+00:00", "missing": missing}


def _rec(r: dict) -> dict:
    return {k: r[k] for k in ("kind", "seed", "t_w", "t_w2")} | {"run": r["id"]}


def _analyses(exp: Path, done: list[dict], partial: bool) -> None:
    a = exp / "analysis"
    a.mkdir()
    relaxed = [r for r in done if r["kind"] in ("efcn", "elcn", "hier")]
    cnn_acc = {r["seed"]: r["final_test_acc"] for r in done if r["kind"] == "cnn"}
    miss = [{"run": "efcn-t0-s1", "reason": "run failed"}] if partial else []

    def dump(name: str, obj: dict) -> None:
        (a / f"{name}.json").write_text(json.dumps(_common(name, miss) | obj))

    curves = []
    for r in relaxed:
        m = [json.loads(line) for line in (exp / "runs" / r["id"] / "metrics.jsonl").read_text().splitlines()]
        off = (r["t_w2"] if r["kind"] == "hier" else r["t_w"])
        curves.append(_rec(r) | {"epoch": [x["epoch"] + off for x in m], "offlocal_ratio": [x["offlocal_ratio"] for x in m],
                                 "cnn_distance": [x["cnn_distance"] for x in m]})
    gains = [_rec(r) | {"cnn_run": f"cnn-s{r['seed']}", "final_test_acc": r["final_test_acc"],
                        "cnn_final_test_acc": cnn_acc[r["seed"]], "gain": r["final_test_acc"] - cnn_acc[r["seed"]],
                        "final_offlocal_ratio": r["final_offlocal_ratio"],
                        "final_cnn_distance": 2 * r["final_offlocal_ratio"]} for r in relaxed]
    dump("distance", {"curves": curves, "gain": gains})

    pts = []
    for r in done:
        if r["kind"] == "cnn":
            for e in (0.0, 1.0, 4.0, 16.0, 40.0):
                lam = 5 + 40 * np.exp(-((np.log1p(e) - 1.5) ** 2)) + r["seed"]
                pts.append(_rec(r) | {"where": "snapshot" if e < 40 else "final", "epoch": e, "loss": 0.5,
                                      "file": f"runs/{r['id']}/snapshots/epoch_{e:g}.pt",
                                      "eigenvalues": [lam, lam / 2], "eig_iterations": 20, "eig_converged": True,
                                      "eig_residual": [1e-4, 2e-4], "trace": 8 * lam, "trace_stderr": lam,
                                      "trace_probes": 10})
        else:
            lam = 3 + (r["t_w"] or 0) * (2 if r["kind"] != "fcn" else 5)
            pts.append(_rec(r) | {"where": "final", "epoch": r["epochs"], "loss": 0.01, "eigenvalues": [lam],
                                  "file": f"runs/{r['id']}/final.pt",
                                  "eig_iterations": 30, "eig_converged": r["kind"] != "lcn",
                                  "eig_residual": [1e-4 if r["kind"] != "lcn" else 0.05], "trace": 6 * lam,
                                  "trace_stderr": 0.5, "trace_probes": 10})
    dump("sharpness", {"points": pts})

    abl = [_rec(r) | {"test_acc": {"both": r["final_test_acc"], "local": r["final_test_acc"] - 0.03,
                                   "offlocal": 0.1 + 0.01 * r["seed"]},
                      "test_loss": {"both": 1.0, "local": 1.1, "offlocal": 2.3},
                      "local_change": {"features.0": 0.12, "features.3": 0.2}} for r in relaxed if r["kind"] == "efcn"]
    dump("ablation", {"runs": abl})
    dump("memory", {"model": "vanilla_cnn", "input_shape": [3, 32, 32],
                    "rows": [{"form": "cnn", "params": 121_930, "param_bytes": 487_720,
                              "optimizer_bytes": {"sgd": 487_720, "adam": 975_440}},
                             {"form": "lc", "params": 3_600_000, "param_bytes": 14_400_000,
                              "optimizer_bytes": {"sgd": 14_400_000, "adam": 28_800_000}},
                             {"form": "fc", "params": 60_000_000, "param_bytes": 240_000_000,
                              "optimizer_bytes": {"sgd": 240_000_000, "adam": 480_000_000}},
                             {"form": "wide:full", "params": 1_200_000, "param_bytes": 4_800_000,
                              "optimizer_bytes": {"sgd": 4_800_000, "adam": 9_600_000}},
                             {"form": "tiled:2", "params": 480_000, "param_bytes": 1_920_000,
                              "optimizer_bytes": {"sgd": 1_920_000, "adam": 3_840_000}}]})
    if partial:  # templates and interpolation not computed yet
        return
    rng = np.random.default_rng(0)
    units = [3, 17, 42, 5, 9, 30]
    tmpl = [r for r in done if r["kind"] in ("efcn", "fcn") and r["seed"] == 0]
    yy, xx = np.mgrid[0:32, 0:32] / 31.0

    def blobs(n: int) -> np.ndarray:  # smooth silhouettes, (n, 3, 32, 32) in [0, 1]
        c = rng.random((n, 3, 1, 1, 2))
        return np.exp(-((xx - c[..., 0]) ** 2 + (yy - c[..., 1]) ** 2) / 0.05).astype(np.float32)

    arrays = {f"{r['id']}": blobs(len(units)) for r in tmpl}
    np.savez(a / "templates.npz", **arrays)
    dump("templates", {"layer": "features.0", "input_shape": [3, 32, 32],
                       "runs": [_rec(r) | {"key": r["id"], "units": units, "offlocal_norm": [1.0] * len(units)}
                                for r in tmpl]})
    alphas = [i / 10 for i in range(11)]
    ic = []
    for r in relaxed:
        if r["kind"] == "efcn" and r["seed"] == 0:
            for method in ("linear", "curvilinear", "output"):
                bump = (0.5 if method == "linear" else 0.1) * (1 + r["t_w"] / 8)
                loss = [0.5 * (1 - x) + 0.01 * x + bump * 4 * x * (1 - x) for x in alphas]
                ic.append(_rec(r) | {"start": {"label": "switch", "source": "x"}, "end": {"label": "efcn_end",
                                     "source": "y"}, "method": method, "train_loss": loss,
                                     "train_acc": [0.9 - 0.2 * bump * 4 * x * (1 - x) for x in alphas],
                                     "test_loss": [v + 0.8 for v in loss],
                                     "test_acc": [0.55 - 0.2 * bump * 4 * x * (1 - x) for x in alphas]})
    dump("interpolation", {"alphas": alphas, "curves": ic})


EXPECTED_SECTIONS = ("claims", "overview", "curves-efcn", "final-efcn", "final-elcn", "hierarchical", "distance",
                     "sharpness", "ablation", "templates", "interpolation", "memory", "runs", "spec", "lattice", "soft",
                     "lattice-distance")


def parse_report(html: str) -> dict[str, dict]:
    """section id -> {"imgs": [src], "tables": n, "missing": [note texts], "text": all text}."""
    from html.parser import HTMLParser

    out: dict[str, dict] = {}

    class P(HTMLParser):
        cur: str | None = None
        in_missing = 0

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "section":
                self.cur = a["id"]
                out[self.cur] = {"imgs": [], "tables": 0, "missing": [], "text": ""}
            elif self.cur is None:
                return
            elif tag == "img":
                out[self.cur]["imgs"].append(a["src"])
            elif tag == "table":
                out[self.cur]["tables"] += 1
            elif tag == "div" and a.get("class") == "missing":
                self.in_missing = 1
            elif tag == "li" and self.in_missing:
                out[self.cur]["missing"].append("")

        def handle_endtag(self, tag):
            if tag == "section":
                self.cur = None
            elif tag == "div":
                self.in_missing = 0

        def handle_data(self, data):
            if self.cur is not None:
                out[self.cur]["text"] += data
                if self.in_missing and out[self.cur]["missing"]:
                    out[self.cur]["missing"][-1] += data

    P().feed(html)
    return out
