"""Cost of the analyses against the training they analyse, and today's algorithms against the previous ones on the
same models.

1. ``sharpness``: for the first finished CNN, eFCN and eLCN of EXPERIMENT (final weights), on its Hessian subset
   and at its settings: the previous code (power iteration with deflation, each product a forward, a first and a
   double backward; plain Hutchinson; kept below as ``_previous_sharpness``, as on main at c424527) against
   ``measure_sharpness`` (Lanczos on a retained-graph operator; Hutchinson off the Lanczos basis): λ_max with its
   relative residual, converged or not, products, trace ± standard error, time; the ratio new / previous.
2. ``products``: one gradient; one product as before (forward + backward + double backward); one product on the
   kept graph; four products batched through ``is_grads_batched`` (time per vector): each over the gradient.
3. ``interpolation``: per eFCN (the first two), the previous loop (every α of every method evaluated in full,
   its ends included) against ``interpolate``; the ratio and the largest difference of their numbers.
4. ``floor``: the arithmetic of the analyses against that of the training, and the least time the analyses could take:
   matmul and convolution FLOPs (``torch.utils.flop_counter``; elementwise work left out, so a lower bound) of
   every analysis recomputed in this process, and of every run trained again from its config into a temporary
   folder (same steps, evaluations and snapshots; relaxed runs start from the experiment's own snapshots); the
   FLOP rate of a 2048² fp32 matmul on this process's threads; then the least analysis time at that rate against
   a quarter of the runs' training span, and the rate the analyses would need to take that quarter.
5. ``end to end``: every analysis recomputed (force) at the experiment's settings with ``--workers`` processes,
   the analyses one after another (the previous code) and side by side (today's: their jobs share the pool's
   queue); with ``--single``, in this process (workers=1) first; then the runs' training time (first start to
   last end, and summed over runs) and the ratio analyses / training of both.

    python benchmarks/bench_analysis.py EXPERIMENT [--threads 1] [--reps 3] [--workers 2] [--single]
                                        [--clock cpu|wall] [--sections sharpness,products,interpolation,end-to-end]

Sections 1-3 run in this process with ``--threads`` (default 1); ``--clock cpu`` times this process's CPU time
(steadier on a shared machine). Section 4 is wall time (worker processes are not this process's CPU).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import time

import torch
import torch.nn.functional as F

from archrelax.analysis import ANALYSES, analyse_experiment, interpolate, measure_sharpness
from archrelax.analysis._common import batches, eval_mode
from archrelax.analysis.context import Context
from archrelax.analysis.experiment import training_time
from archrelax.analysis.hessian import HessianOperator
from archrelax.analysis.interpolation import default_alphas, interpolate_state
from archrelax.analysis.settings import settings_from_spec
from archrelax.store import ExperimentFolder

CLOCK = time.perf_counter


def _time(fn) -> float:
    t = CLOCK()
    fn()
    return CLOCK() - t


# ---- the previous code, for comparison only -----------------------------------------------------------------
def _previous_hvp(model, x, y, v, batch_size):
    params = [p for p in model.parameters() if p.requires_grad]
    hv = [torch.zeros_like(p) for p in params]
    for xb, yb in batches(x, y, batch_size):
        w = len(xb) / len(x)
        grads = torch.autograd.grad(F.cross_entropy(model(xb), yb), params, create_graph=True)
        hvb = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params)
        hv = [a + w * b.detach() for a, b in zip(hv, hvb)]
    return hv


def _previous_sharpness(model, x, y, *, tol, max_iter, probes, seed, batch_size):
    """Power iteration (k = 1) stopping at ‖Hv − λv‖/|λ| ≤ √tol, and Hutchinson: main's algorithms."""
    dot = lambda a, b: sum((p * q).sum() for p, q in zip(a, b))  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        params = [p for p in model.parameters() if p.requires_grad]
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        n = dot(v, v).sqrt()
        v = [a / n for a in v]
        for it in range(1, max_iter + 1):
            hv = _previous_hvp(model, x, y, v, batch_size)
            lam = dot(hv, v).item()
            r = dot(*([[a - lam * b for a, b in zip(hv, v)]] * 2)).sqrt().item() / abs(lam)
            if r <= math.sqrt(tol) or it == max_iter:
                break
            n = dot(hv, hv).sqrt()
            v = [a / n for a in hv]
        gen = torch.Generator().manual_seed(seed)
        samples = []
        for _ in range(probes):
            g = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.dtype) for p in params]
            samples.append(dot(_previous_hvp(model, x, y, g, batch_size), g).item())
    s = torch.tensor(samples, dtype=torch.float64)
    return lam, r, r <= math.sqrt(tol), it + probes, s.mean().item(), (s.std() / math.sqrt(probes)).item()


def _previous_interpolation(model0, model1, train, test, alphas, methods, batch_size):
    sd0, sd1 = model0.state_dict(), model1.state_dict()
    work = copy.deepcopy(model0)

    def logp(x):
        with torch.no_grad(), eval_mode(work):
            return torch.cat([F.log_softmax(work(x[i:i + batch_size]), 1) for i in range(0, len(x), batch_size)])

    out = {}
    for m in methods:
        if m == "output":
            ends = {}
            for s, (x, _) in (("train", train), ("test", test)):
                ends[s] = []
                for sd in (sd0, sd1):
                    work.load_state_dict(sd)
                    ends[s].append(logp(x))
        rows = []
        for a in alphas:
            if m != "output":
                work.load_state_dict(interpolate_state(sd0, sd1, a, m))
            for s, (x, y) in (("train", train), ("test", test)):
                if m != "output":
                    lp = logp(x)
                elif a in (0.0, 1.0):
                    lp = ends[s][int(a)]
                else:
                    lp = torch.logaddexp(ends[s][0] + math.log1p(-a), ends[s][1] + math.log(a))
                rows.append(F.nll_loss(lp, y).item())
        out[m] = rows
    return out


# ---- sections ---------------------------------------------------------------------------------------------------
def sharpness(ctx: Context, reps: int) -> None:
    s = ctx.s
    x, y = ctx.data()["hessian"]
    for kind in ("cnn", "efcn", "elcn"):
        run = next((r for r in ctx.of_kind(kind) if ctx.done(r)), None)
        if run is None:
            continue
        model = ctx.load(ctx.folder(run).final_path)
        kw = dict(tol=s.sharpness_tol, max_iter=s.sharpness_max_iter, probes=s.trace_probes, seed=s.seed,
                  batch_size=s.batch_size)
        old, new = [], []
        for _ in range(reps):  # interleaved
            t = CLOCK()
            o = _previous_sharpness(model, x, y, **kw)
            old.append(CLOCK() - t)
            t = CLOCK()
            n = measure_sharpness(model, x, y, k=1, max_basis=s.sharpness_basis, **kw)
            new.append(CLOCK() - t)
        to, tn = statistics.median(old), statistics.median(new)
        e = n.eigen
        print(f"sharpness {kind:<5} previous: λ_max {o[0]:8.3f} (rel. residual {o[1]:.3f}, converged {o[2]!s:5}), "
              f"{o[3]:2d} products, trace {o[4]:7.1f} ± {o[5]:5.1f}, {to:6.2f} s")
        print(f"sharpness {kind:<5} now:      λ_max {e.values[0]:8.3f} (rel. residual {e.residuals[0]:.3f}, converged "
              f"{e.converged[0]!s:5}), {e.products + n.trace.probes:2d} products, trace {n.trace.trace:7.1f} ± "
              f"{n.trace.stderr:5.1f}, {tn:6.2f} s   now/previous {tn / to:.2f}")


def products(ctx: Context, reps: int) -> None:
    x, y = ctx.data()["hessian"]
    for kind in ("cnn", "efcn", "elcn"):
        run = next((r for r in ctx.of_kind(kind) if ctx.done(r)), None)
        if run is None:
            continue
        model = ctx.load(ctx.folder(run).final_path).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        op = HessianOperator(model, x, y, batch_size=ctx.s.batch_size)
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
        vs = op.unflatten(v)
        v4 = [torch.stack([t] * 4) for t in vs]
        grads = op._grads

        def grad() -> None:
            torch.autograd.grad(F.cross_entropy(model(x), y), params)

        def batched() -> None:
            torch.autograd.grad(grads, params, grad_outputs=v4, retain_graph=True, is_grads_batched=True)

        row = {"gradient": grad, "product as before": lambda: _previous_hvp(model, x, y, vs, ctx.s.batch_size),
               "product on the kept graph": lambda: op(v)}
        try:
            batched()
            row["4 batched, per vector"] = batched
        except RuntimeError as e:  # e.g. the eLCN kernel's out= bmm has no batching rule
            print(f"products {kind}: is_grads_batched fails ({str(e).splitlines()[0][:80]})")
        times = {}
        for name, fn in row.items():
            fn()
            times[name] = statistics.median(_time(fn) for _ in range(reps)) / (4 if "batched" in name else 1)
        g = times["gradient"]
        print(f"products {kind:<5} {op.dim:>9d} params, {len(x)} samples: "
              + ", ".join(f"{k} {t * 1e3:.1f} ms ({t / g:.2f}x)" for k, t in times.items()))


def interpolation(ctx: Context, reps: int) -> None:
    from archrelax.train.checkpoint import load_checkpoint

    s, d = ctx.s, ctx.data()
    for run in [r for r in ctx.of_kind("efcn") if ctx.done(r)][:2]:
        final = ctx.folder(run).final_path
        end = ctx.load(final)
        start = ctx.embedded(ctx.switch_snapshot(run), end, load_checkpoint(final)["arch"])
        alphas = default_alphas(s.alphas)
        old, new = [], []
        for _ in range(reps):
            t = CLOCK()
            o = _previous_interpolation(start, end, d["train"], d["test"], alphas, s.interp_methods, s.batch_size)
            old.append(CLOCK() - t)
            t = CLOCK()
            n = interpolate(start, end, d["train"], d["test"], alphas=alphas, methods=s.interp_methods,
                            batch_size=s.batch_size)
            new.append(CLOCK() - t)
        diff = max(abs(a - b) for m in n for a, b in zip(o[m], [v for pair in zip(n[m].train, n[m].test)
                                                                   for v in (pair[0].loss, pair[1].loss)]))
        to, tn = statistics.median(old), statistics.median(new)
        print(f"interpolation {run.id}: previous {to:.2f} s, now {tn:.2f} s, now/previous {tn / to:.2f} "
              f"({len(alphas)} α x {len(s.interp_methods)} methods; largest loss difference {diff:.1e} nats)")


class _OneAfterAnother:
    """Stands in for ``concurrent.futures.ThreadPoolExecutor`` in ``analyse_experiment``: the analyses computed
    one after another, as the previous code did (each one's jobs still in the worker processes)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self) -> "_OneAfterAnother":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def map(self, fn, items):
        return [fn(item) for item in items]


def _gemm_rate(reps: int = 5) -> float:
    """FLOP/s of a 2048² fp32 matmul on this process's threads (median of ``reps``)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    return 2 * 2048 ** 3 / statistics.median(_time(lambda: a @ b) for _ in range(reps))


def _retrain_flops(ctx: Context) -> dict[str, float]:
    """Matmul/conv FLOPs of training every finished run again, from its own config, into a temporary folder."""
    import json
    import tempfile
    from pathlib import Path

    from torch.utils.flop_counter import FlopCounterMode

    from archrelax.train import TrainConfig, train

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in ctx.plan.values():
            if not ctx.done(run):
                continue
            folder = ctx.folder(run)
            cfg = json.loads(folder.config_path.read_text())
            if cfg.get("init_from"):  # relative to the run folder: point at the experiment's own snapshot
                cfg["init_from"] = str((folder.path / cfg["init_from"]).resolve())
            cfg["progress"] = False
            with FlopCounterMode(display=False) as fc:
                train(TrainConfig.from_dict(cfg), Path(tmp) / run.id)
            out[run.id] = fc.get_total_flops()
    return out


def floor(exp: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    settings = dataclasses.replace(settings_from_spec(exp), workers=1)
    rate = _gemm_rate()
    flops = {}
    for name in ANALYSES:
        with FlopCounterMode(display=False) as fc:
            analyse_experiment(exp, only=[name], progress=False, force=True, settings=settings)
        flops[name] = fc.get_total_flops()
    train_flops = _retrain_flops(Context(ExperimentFolder(exp), settings, progress=False))
    span, total = training_time(Context(ExperimentFolder(exp), settings, progress=False))
    a, t = sum(flops.values()), sum(train_flops.values())
    print("floor: analyses " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in flops.items()) + f" GFLOP; total {a / 1e9:.0f} "
          f"GFLOP against {t / 1e9:.0f} GFLOP to train the {len(train_flops)} runs: arithmetic ratio {a / t:.3f}")
    print(f"floor: a 2048² fp32 matmul runs at {rate / 1e9:.0f} GFLOP/s on {torch.get_num_threads()} threads; the "
          f"training ran at {t / span / 1e9:.0f} GFLOP/s over its span of {span:.1f} s ({t / total / 1e9:.0f} per run-second)")
    print(f"floor: at the matmul's rate the analyses take at least {a / rate:.1f} s = {a / rate / span:.3f} of the "
          f"training span; to take 0.25 of it ({0.25 * span:.1f} s) they would have to run at "
          f"{a / (0.25 * span) / 1e9:.0f} GFLOP/s = {a / (0.25 * span) / rate:.2f}x that matmul")


def end_to_end(exp: str, workers: int, single: bool) -> None:
    import concurrent.futures as cf
    import os

    load = os.getloadavg()[0]
    settings = settings_from_spec(exp)
    modes = ([("1 worker", 1, False)] if single else []) + [
        (f"{workers} workers, analyses one after another (previous)", workers, True),
        (f"{workers} workers, analyses side by side (now)", workers, False)]
    took = {}
    for label, n, sequential in modes:
        real = cf.ThreadPoolExecutor
        if sequential:
            cf.ThreadPoolExecutor = _OneAfterAnother
        try:
            t = time.perf_counter()
            res = analyse_experiment(exp, only=list(ANALYSES), progress=False, force=True,
                                     settings=dataclasses.replace(settings, workers=n))
            took[label] = time.perf_counter() - t
        finally:
            cf.ThreadPoolExecutor = real
        each = ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items())
        print(f"end to end, {label}: analyses {took[label]:.1f} s ({each}; torch threads {torch.get_num_threads()})")
    ctx = Context(ExperimentFolder(exp), settings, progress=False)
    span, total = training_time(ctx)
    prev, now = took[modes[-2][0]], took[modes[-1][0]]
    print(f"training: {span:.1f} s from the first start to the last end ({total:.1f} s summed over runs); "
          f"analyses / training: previous {prev / span:.3f}, now {now / span:.3f} (now/previous {now / prev:.2f}; "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f})")


def main() -> None:
    global CLOCK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--single", action="store_true", help="end to end with 1 worker as well")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--sections", default="sharpness,products,interpolation,floor,end-to-end")
    args = ap.parse_args()
    sections = args.sections.split(",")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    ctx = Context(ExperimentFolder(args.experiment), settings_from_spec(args.experiment), progress=False)
    for name, fn in (("sharpness", sharpness), ("products", products), ("interpolation", interpolation)):
        if name in sections:
            fn(ctx, args.reps)
    if "floor" in sections:
        torch.set_num_threads(threads)
        floor(args.experiment)
    if "end-to-end" in sections:
        torch.set_num_threads(threads)
        end_to_end(args.experiment, args.workers, args.single)


if __name__ == "__main__":
    main()
