"""Writing a run down: the JSON of every figure, and a Markdown table of medians with the
ratio of the subject to each baseline, the targets, memory and the MySQL summary."""

import json
from pathlib import Path

from benchmarks import goals, memory_suite
from benchmarks.results import Row, lower_is_better, medians, ratio


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def write_json(path: Path, meta: dict, rows: list[Row], extra: dict) -> None:
    # "suites" holds each suite's own summary; the names asked for go under "suite_names".
    path.write_text(json.dumps({**meta, "suite_names": meta["suites"],
                                "rows": [r.to_json() for r in rows], "suites": extra},
                               indent=1))


def render_markdown(meta: dict, rows: list[Row], extra: dict) -> str:
    subject, baselines = meta["subject"], meta["baselines"]
    table = medians(rows)
    lines = [f"# Benchmark run {meta['stamp']}", "",
             f"- command: `{meta['command']}`",
             f"- machine: {meta['machine']}",
             f"- subject: **{subject}**, baselines: {', '.join(baselines)}; "
             f"{meta['rounds']} interleaved round(s), figures are medians over rounds; "
             + ("each case ran with the other targets stopped" if meta.get("isolated")
                else "every target stayed up throughout")
             + (f"; dfs mounted with --read-cache {meta['dfs_read_cache_mib']}"
                if meta.get("dfs_read_cache_mib") else "")
             + ("; dfs mounted with --async-dirops" if meta.get("dfs_async_dirops") else "")
             + ("" if meta.get("xattrs", True)
                else "; every FUSE target mounted without extended attributes (--no-xattrs)"),
             f"- scale: {meta['scale_name']} ({meta['scale']})", ""]
    lines += [f"- note: {note}" for note in meta["notes"]]
    lines += [f"- **FAILED**: {failure}" for failure in meta.get("failures", [])]
    head = ["suite", "case", "metric", subject]
    for base in baselines:
        head += [base, f"{subject}/{base}"]
    lines += ["", "## Figures", "", "| " + " | ".join(head) + " |",
              "|" + "---|" * len(head)]
    for (suite, case, metric), per_target in table.items():
        cells = [suite, case, metric + (" (lower is better)" if lower_is_better(metric) else ""),
                 _fmt(per_target.get(subject))]
        for base in baselines:
            cells += [_fmt(per_target.get(base)),
                      _fmt(ratio(per_target.get(subject), per_target.get(base)))]
        lines.append("| " + " | ".join(cells) + " |")
    failed = frozenset(tuple(f) for f in meta.get("failed", []))
    lines += ["", f"## Targets ({subject} against {goals.REFERENCE}, ratio of medians)", ""]
    if goals.REFERENCE in baselines:
        lines += ["| target | ratio | verdict |", "|---|---|---|"]
        for goal in goals.RATIO_GOALS:
            if goal.suite in meta["suites"]:
                verdict, got = goal.judge(table, subject, failed)
                lines.append(f"| {goal.describe()} | {_fmt(got)} | {verdict} |")
    else:
        lines.append(f"Not judged: {goals.REFERENCE} was not among the baselines of this run.")
    unfinished = goals.unfinished_checks(failed, subject)
    if unfinished:
        lines += ["", "| round check | failed rounds | verdict |", "|---|---|---|"]
        lines += [f"| {what} | {_fmt(value)} | {verdict} |" for what, verdict, value in unfinished]
    checks = goals.absolute_checks(table, subject)
    if checks:
        lines += ["", "| MySQL demo check | figure | verdict |", "|---|---|---|"]
        lines += [f"| {what} | {_fmt(value)} | {verdict} |" for what, verdict, value in checks]
    memory = memory_suite.memory_checks(table, subject, meta["scale"].get("mem_sizes", ""),
                                        meta.get("memory_bounds", {}).get(subject, {}))
    if memory:
        lines += ["", "| memory check | peak MiB, or ratio of peaks | verdict |", "|---|---|---|"]
        lines += [f"| {what} | {_fmt(value)} | {verdict} |" for what, verdict, value in memory]
    if meta.get("memory"):
        lines += ["", "## Peak resident memory (VmHWM, MiB) over the run", "",
                  "| target | role | peak MiB |", "|---|---|---|"]
        for target, roles in meta["memory"].items():
            lines += [f"| {target} | {role} | {_fmt(mib)} |" for role, mib in roles.items()]
    if "mysql" in extra:
        lines += ["", "## MySQL demo", "", "| target | round | expansions (second: new size, "
                  "took) | through |", "|---|---|---|---|"]
        for target, rounds in extra["mysql"]["details"].items():
            for number, detail in enumerate(rounds, 1):
                steps = "; ".join(f"{e['second']} s: {e['bytes'] >> 20} MiB, {e['took_s']} s"
                                  + (f" FAILED {e['error']}" if e["error"] else "")
                                  for e in detail["expansions"])
                lines.append(f"| {target} | {number} | {steps} | {detail['expands_with']} |")
        if extra["mysql"].get("plot"):
            lines += ["", f"![QPS over time]({extra['mysql']['plot']})"]
    return "\n".join(lines) + "\n"
