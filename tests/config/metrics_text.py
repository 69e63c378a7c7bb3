"""Reading a Prometheus text exposition in tests: {(name, ((label, value), ...)): value}."""

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text_or_samples, name: str, default=None, **labels) -> float | None:
    found = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    return found.get((name, tuple(sorted(labels.items()))), default)
