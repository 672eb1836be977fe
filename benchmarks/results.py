"""One measured figure, and the summaries a run is judged by."""

import statistics
from dataclasses import asdict, dataclass

# Figures where less is better; every other figure is a rate where more is better.
LOWER_IS_BETTER = ("p50 ms", "p95 ms", "p99 ms", "CPU s/GiB", "zero-QPS s", "errors")


@dataclass
class Row:
    suite: str
    case: str
    metric: str
    target: str
    round: int
    value: float

    def to_json(self) -> dict:
        return asdict(self)


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def medians(rows: list[Row]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(suite, case, metric) -> target -> median over rounds, in the order rows arrived."""
    grouped: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for row in rows:
        grouped.setdefault((row.suite, row.case, row.metric), {}) \
               .setdefault(row.target, []).append(row.value)
    return {key: {target: statistics.median(values) for target, values in per_target.items()}
            for key, per_target in grouped.items()}


def ratio(subject: float | None, baseline: float | None) -> float | None:
    if subject is None or baseline is None or baseline == 0:
        return None
    return subject / baseline
