"""The peer a Django team would pick for RFC 7662: django-oauth-toolkit's introspection, as a
bench-only project that `bench/api_bench.py` starts beside Custody (its own database, the same
gunicorn worker class and count, the same database connection settings)."""
