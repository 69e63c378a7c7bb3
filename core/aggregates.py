"""Aggregates Django does not ship, computed by the database on each backend Custody runs on."""

from __future__ import annotations

import statistics

from django.db.models import Aggregate, DurationField, ExpressionWrapper, F, FloatField


class _SqliteMedian:
    """SQLite's `custody_median(x)`: the median of the non-null values, as PostgreSQL's
    percentile_cont(0.5) answers it (the mean of the middle two for an even count)."""

    def __init__(self):
        self.values: list[float] = []

    def step(self, value):
        if value is not None:
            self.values.append(value)

    def finalize(self):
        return float(statistics.median(self.values)) if self.values else None


class MedianSecondsBetween(Aggregate):
    """The median of `end - start` in seconds over the rows, in the database: PostgreSQL's
    percentile_cont(0.5); on SQLite an aggregate function registered on the connection (the
    same answer: the middle value, or the mean of the middle two). None over no rows."""

    name = "MedianSecondsBetween"
    output_field = FloatField()

    def __init__(self, start: str, end: str, **extra):
        super().__init__(
            ExpressionWrapper(F(end) - F(start), output_field=DurationField()), **extra
        )

    def as_postgresql(self, compiler, connection, **extra_context):
        return self.as_sql(
            compiler,
            connection,
            template="percentile_cont(0.5) WITHIN GROUP "
            "(ORDER BY EXTRACT(EPOCH FROM %(expressions)s))",
            **extra_context,
        )

    def as_sqlite(self, compiler, connection, **extra_context):
        # Django computes a datetime difference on SQLite in microseconds (django_timestamp_diff).
        connection.ensure_connection()
        connection.connection.create_aggregate("custody_median", 1, _SqliteMedian)
        return self.as_sql(
            compiler,
            connection,
            template="(custody_median(%(expressions)s) / 1000000.0)",
            **extra_context,
        )
