"""Plot results.json: throughput and p99 latency against concurrency, one row per group.

    benchmarks/.venvs/tools/bin/python benchmarks/plot.py results.json benchmark.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TITLES = {
    "kmeans": "K-Means",
    "trivial": "Trivial predictor",
    "embedding": "sentence-embedding",
}
STYLE = {"myelin": ("-", "o", 2.5), "baseline": ("--", "s", 1.5), "peer": (":", "^", 1.5), "ceiling": ("-.", "x", 1.2)}


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    results = data["results"]
    groups = [g for g in ("kmeans", "trivial", "embedding") if any(r["group"] == g and r["levels"] for r in results)]
    if not groups:
        print("nothing to plot")
        return
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4.2 * len(groups)), squeeze=False)
    for row, group in zip(axes, groups):
        for r in results:
            if r["group"] != group or not r["levels"]:
                continue
            levels = sorted(int(c) for c in r["levels"])
            rps = [r["levels"][str(c)]["rps"] for c in levels]
            p99 = [r["levels"][str(c)]["p99_ms"] for c in levels]
            ls, marker, lw = STYLE.get(r["kind"], ("-", ".", 1))
            row[0].plot(levels, rps, ls, marker=marker, lw=lw, label=r["label"])
            row[1].plot(levels, p99, ls, marker=marker, lw=lw, label=r["label"])
        row[0].set_title(f"{TITLES[group]}: throughput")
        row[0].set_ylabel("requests/s (median)")
        row[1].set_title(f"{TITLES[group]}: p99 latency")
        row[1].set_ylabel("p99 latency (ms, median of runs)")
        row[1].set_yscale("log")
        for ax in row:
            ax.set_xscale("log", base=2)
            ticks = sorted({int(c) for r in results if r["group"] == group for c in r["levels"]})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlabel("concurrent connections (wrk -c)")
            ax.grid(True, which="both", alpha=0.3)
        row[0].set_ylim(bottom=0)
        row[0].legend(fontsize=8)
    meta = data["meta"]
    fig.suptitle(f"Server pinned to 1 core, wrk to another · {meta['cpu']} · {meta['started']}"
                 + (" · QUICK (smoke) run" if meta.get("quick") else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
