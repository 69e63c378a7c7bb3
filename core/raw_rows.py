"""Model instances from rows read by raw SQL, for the few hot paths that read several tables in
one statement (authentication, introspection, the submission's agent lock)."""

from django.db import connection


def model_from_row(model, values, db_connection=None):
    """An instance from its concrete columns (in `_meta.concrete_fields` order), through each
    field's own conversion (JSON), as the ORM would have built it."""
    db_connection = db_connection or connection
    values = [
        field.from_db_value(value, None, db_connection)
        if hasattr(field, "from_db_value")
        else value
        for field, value in zip(model._meta.concrete_fields, values, strict=True)
    ]
    fields = [field.attname for field in model._meta.concrete_fields]
    return model.from_db(db_connection.alias, fields, values)


def columns(model, alias: str) -> str:
    """The SELECT list of `model`'s concrete columns under a table alias."""
    return ", ".join(f'{alias}."{field.column}"' for field in model._meta.concrete_fields)
