"""Request metrics of several HTTP front processes, exposed as one server's.

Each front counts its own requests (RequestObserver) and sends its metric families to
the primary every second; the primary's /metrics adds them, series by series, to its
own. A front that dies keeps what it had counted (its counters and histograms stay in
the sum), so a counter never goes back when a front is restarted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def merge(groups: Iterable[Iterable[Metric]]) -> list[Metric]:
    """Families of the same name summed sample by sample (same name and labels)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[SeriesKey, float]] = {}
    for group in groups:
        for family in group:
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                series[key] = series.get(key, 0.0) + sample.value
    merged = []
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        merged.append(family)
    return merged


class FrontMetrics:
    """A collector for the primary's registry: its own request metrics plus every front's."""

    def __init__(self, own: CollectorRegistry) -> None:
        self.own = own
        self.latest: dict[int, list[Metric]] = {}
        self.retired: list[Metric] = []
        """What fronts that died had counted (counters and histograms only)."""

    def update(self, front: int, families: list[Metric]) -> None:
        self.latest[front] = families

    def retire(self, front: int) -> None:
        """Keep a dead front's counts; its gauges (requests in flight) died with it."""
        families = self.latest.pop(front, [])
        kept = [f for f in families if f.type in ("counter", "histogram", "summary")]
        self.retired = merge([self.retired, kept])

    def collect(self) -> Iterator[Metric]:
        yield from merge([self.own.collect(), self.retired, *self.latest.values()])
