"""A figure from `archrelax export`'s table, with pandas and matplotlib alone.

    archrelax demo --out archrelax-demo               # or any experiment folder
    archrelax export archrelax-demo                   # -> archrelax-demo/metrics.csv
    python docs/export_example.py archrelax-demo/metrics.csv efcn.png

Left: test accuracy against epochs on the CNN's clock, the CNN in black and one line per eFCN coloured by its
switch time t_w. Right: each relaxed kind's final test accuracy against t_w (mean over seeds), the CNN's final
accuracy as a dotted line. Needs pandas (`pip install pandas`); archrelax itself does not.
"""
from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def main(table: str, out: str = "export_example.png") -> None:
    df = pd.read_csv(table)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))

    # every evaluation: one line per run
    cnn = df[df.kind == "cnn"]
    for _, run in cnn.groupby("run"):
        left.plot(run.global_epoch, 100 * run.test_acc, color="black", lw=2, label="CNN")
    efcn = df[df.kind == "efcn"]
    tws = sorted(efcn.t_w.dropna().unique())
    colours = plt.cm.viridis([i / max(len(tws) - 1, 1) for i in range(len(tws))])
    for _, run in efcn.groupby("run"):
        left.plot(run.global_epoch, 100 * run.test_acc, color=colours[tws.index(run.t_w.iloc[0])], lw=1,
                  label=f"eFCN t_w={run.t_w.iloc[0]:g}")
    left.set_xscale("symlog", linthresh=1.0)
    left.set(xlabel="epoch (CNN's clock)", ylabel="test accuracy (%)", title="test accuracy during training")
    handles, labels = left.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one legend entry per label (several seeds share one)
    left.legend(unique.values(), unique.keys(), fontsize=7)

    # the last evaluation of each finished run, averaged over seeds
    final = df[df.status == "done"].sort_values("step").groupby("run").tail(1)
    for kind, marker in (("efcn", "o"), ("elcn", "s")):
        k = final[final.kind == kind].groupby("t_w").test_acc.mean()
        if len(k):
            right.plot(k.index, 100 * k.values, marker=marker, label=kind)
    if len(final[final.kind == "cnn"]):
        right.axhline(100 * final[final.kind == "cnn"].test_acc.mean(), color="black", ls=":", label="CNN at its end")
    right.set_xscale("symlog", linthresh=1.0)
    right.set(xlabel="switch time t_w (epochs)", ylabel="final test accuracy (%)", title="final accuracy against t_w")
    right.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(*sys.argv[1:3])
