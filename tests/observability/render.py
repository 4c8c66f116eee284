"""Render the per-API dashboard's main panels to a PNG from a run's real Prometheus data.

Called by the end-to-end test when MYELIN_DASHBOARD_PNG names the output (`make docs-images` writes
docs/images/dashboard-api.png). Each subplot is one panel of `components/observability/dashboards.py`, with the
same queries, evaluated as range queries over the run.
"""

from __future__ import annotations

from pathlib import Path

from components.observability import queries

from .harness import API, ObservedStack

PANELS = (  # (title, panel keys, unit label)
    ("Requests/s by status", ("requests_by_status",), "req/s"),
    ("Latency p50 / p95 / p99", ("latency_p50", "latency_p95", "latency_p99"), "seconds"),
    ("In flight per replica vs target", ("in_flight_per_replica", "target_in_flight"), "requests"),
    ("503s by reason", ("admission_rejections",), "req/s"),
    ("Batching", ("batch_size_mean", "batches_per_second"), "payloads / batches per s"),
    ("5xx ratio", ("error_ratio",), "share"),
)


def render_api_dashboard(stack: ObservedStack, start: float, end: float, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {p.key: p for p in queries.api_panels(api=API, window="10s")}
    fig, axes = plt.subplots(3, 2, figsize=(12, 9), constrained_layout=True)
    fig.suptitle(f"Myelin / API — {API} (myelin serve, 2 processes, real Prometheus data)")
    for ax, (title, keys, unit) in zip(axes.flat, PANELS):
        for key in keys:
            panel = panels[key]
            for series in stack.query_range(panel.expr, start, end):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                legend = panel.legend
                for label, value in series["metric"].items():
                    legend = legend.replace("{{%s}}" % label, value)
                ax.plot(xs, ys, label=legend or panel.title)
        ax.set_title(title)
        ax.set_xlabel("seconds into the run")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
