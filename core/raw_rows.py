"""Model instances from rows read by raw SQL, for the few hot paths that read several tables in
one statement (authentication, introspection, the submission's agent lock)."""

from django.db import connection

# (model, connection alias) -> per concrete field: its column expression and the converters the
# ORM would run on that column's value (the backend's first, then the field's own).
_converters: dict = {}


def _field_converters(model, db_connection) -> list:
    key = (model, db_connection.alias)
    found = _converters.get(key)
    if found is None:
        found = []
        for field in model._meta.concrete_fields:
            expression = field.get_col(model._meta.db_table)
            found.append(
                (
                    expression,
                    db_connection.ops.get_db_converters(expression)
                    + expression.get_db_converters(db_connection),
                )
            )
        _converters[key] = found
    return found


def model_from_row(model, values, db_connection=None):
    """An instance from its concrete columns (in `_meta.concrete_fields` order), through the
    same conversions the ORM applies (SQLite's text dates made aware datetimes, JSON decoded),
    as the ORM would have built it."""
    db_connection = db_connection or connection
    converted = []
    for (expression, converters), value in zip(
        _field_converters(model, db_connection), values, strict=True
    ):
        for converter in converters:
            value = converter(value, expression, db_connection)
        converted.append(value)
    fields = [field.attname for field in model._meta.concrete_fields]
    return model.from_db(db_connection.alias, fields, converted)


def columns(model, alias: str) -> str:
    """The SELECT list of `model`'s concrete columns under a table alias."""
    return ", ".join(f'{alias}."{field.column}"' for field in model._meta.concrete_fields)
