"""Migration operations for the audit log, which is the one table that grows to millions of rows."""

from django.db.migrations import AddIndex


class AddIndexOnline(AddIndex):
    """AddIndex that, on PostgreSQL, builds the index CONCURRENTLY: a plain CREATE INDEX blocks
    every append to the audit log (so every state change in Custody) for the whole build, minutes
    at 10M events. Needs a migration with `atomic = False`. SQLite builds it plainly."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == "postgresql":
            if schema_editor.connection.in_atomic_block:
                raise RuntimeError("AddIndexOnline needs a migration with atomic = False.")
            # A failed concurrent build leaves an INVALID index behind: drop it, then build.
            schema_editor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{self.index.name}"')
            schema_editor.add_index(model, self.index, concurrently=True)
        else:
            schema_editor.add_index(model, self.index)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.remove_index(model, self.index, concurrently=True)
        else:
            schema_editor.remove_index(model, self.index)
