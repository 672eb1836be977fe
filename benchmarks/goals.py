"""The performance targets of the issue, judged against MooseFS on the same run."""

from collections import Counter
from dataclasses import dataclass

from benchmarks.results import lower_is_better, ratio

REFERENCE = "moosefs"


@dataclass(frozen=True)
class Goal:
    suite: str
    case: str
    metric: str
    factor: float       # subject/reference must reach it (or stay under it, for latencies)

    def describe(self) -> str:
        sign = "<=" if lower_is_better(self.metric) else ">="
        return f"{self.suite} {self.case} {self.metric} {sign} {self.factor:g}x {REFERENCE}"

    def judge(self, medians: dict, subject: str,
              failed: frozenset = frozenset()) -> tuple[str, float | None]:
        """`failed`: the (suite, case, target) of rounds that did not finish. The
        medians leave such a round out, so the verdict must not rest on them."""
        per_target = medians.get((self.suite, self.case, self.metric), {})
        got = None
        if REFERENCE in per_target and subject in per_target:
            got = ratio(per_target[subject], per_target[REFERENCE])
        if (self.suite, self.case, subject) in failed:
            return "NOT MET (a round failed)", got
        if got is None:
            return "not measured", None
        met = got <= self.factor if lower_is_better(self.metric) else got >= self.factor
        return ("met" if met else "NOT MET"), got


RATIO_GOALS = [
    Goal("fio", "seq-write", "MB/s", 1.5),
    Goal("fio", "par-write", "MB/s", 1.5),
    Goal("fio", "seq-read", "MB/s", 1.0),
    Goal("fio", "rand-read", "IOPS", 1.0),
    Goal("fio", "rand-read", "p99 ms", 1.0),
    Goal("fio", "rand-write", "IOPS", 1.0),
    Goal("fio", "rand-write", "p99 ms", 1.0),
    *(Goal("meta", phase, "ops/s", 1.0) for phase in ("create", "stat", "rename", "unlink",
                                                       "mkdir")),
    Goal("mysql", "oltp", "QPS", 1.0),
    Goal("fio", "seq-write", "CPU s/GiB", 1.0),
]

MAX_QPS_CHANGE = 0.10


def unfinished_checks(failed: frozenset, subject: str) -> list[tuple[str, str, float]]:
    """One NOT MET per suite with a round that did not finish on the subject (a stall,
    a crash): the medians and the suite's own checks see only the rounds that did."""
    counts = Counter(suite for suite, _, target in failed if target == subject)
    return [(f"{suite}: every round ran to its end", "NOT MET", n)
            for suite, n in sorted(counts.items())]


def absolute_checks(medians: dict, subject: str) -> list[tuple[str, str, float]]:
    """The MySQL demo's own promises, on the subject alone: (what, verdict, figure)."""
    checks = []
    for (suite, case, metric), per_target in medians.items():
        if suite != "mysql" or subject not in per_target:
            continue
        value = per_target[subject]
        if metric in ("zero-QPS s", "errors"):
            checks.append((f"mysql {metric} == 0", "met" if value == 0 else "NOT MET", value))
        elif metric == "after/before":
            met = abs(value - 1) <= MAX_QPS_CHANGE
            checks.append((f"mysql {case}: QPS 10 s after within 10% of before",
                           "met" if met else "NOT MET", value))
    return checks
