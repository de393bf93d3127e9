"""Reading a Prometheus exposition in tests: one sample's value by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample(text: str | bytes, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels`` (summed over the
    others); None when there is none."""
    if isinstance(text, bytes):
        text = text.decode()
    found = [s.value for family in text_string_to_metric_families(text) for s in family.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found) if found else None
