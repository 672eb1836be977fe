"""The MySQL demo's picture: QPS per second for each target, the expansions marked, and
the data size on a second axis."""

from pathlib import Path


def plot_qps(details: dict[str, list[dict]], path: Path) -> None:
    """details: target -> one detail per round; the first round of each is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, qps_axis = plt.subplots(figsize=(11, 5))
    size_axis = qps_axis.twinx()
    marked = set()
    for target, rounds in details.items():
        detail = rounds[0]
        rows = detail["per_second"]
        line, = qps_axis.plot([r["second"] for r in rows], [r["qps"] for r in rows],
                              label=f"{target} QPS", linewidth=1.2)
        sizes = detail["data_bytes"]
        size_axis.plot([t for t, _ in sizes], [b / 2**20 for _, b in sizes], linestyle=":",
                       color=line.get_color(), label=f"{target} data size")
        for expansion in detail["expansions"]:
            if detail["has_quota"] and expansion["second"] not in marked:
                marked.add(expansion["second"])
                qps_axis.axvline(expansion["second"], color="grey", linestyle="--")
                qps_axis.annotate(f"expand to {expansion['bytes'] >> 20} MiB",
                                  (expansion["second"], 0), rotation=90, va="bottom",
                                  xytext=(3, 5), textcoords="offset points", fontsize=8)
    qps_axis.set_xlabel("seconds into sysbench oltp_read_write")
    qps_axis.set_ylabel("queries per second")
    size_axis.set_ylabel("data folder size (MiB)")
    qps_axis.set_ylim(bottom=0)
    size_axis.set_ylim(bottom=0)
    handles = qps_axis.get_legend_handles_labels()
    more = size_axis.get_legend_handles_labels()
    qps_axis.legend(handles[0] + more[0], handles[1] + more[1], loc="lower right", fontsize=8)
    qps_axis.set_title("MariaDB under sysbench with a growing bulk load; volume expanded online")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
