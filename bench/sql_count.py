"""Bench-only middleware: count the SQL statements each request runs and say so in a response
header (`X-Bench-SQL`), so the benchmark reads the figure from the real server, for Custody and
for its peer alike. Never in production settings."""

from django.db import connection

HEADER = "X-Bench-SQL"


class SqlCountMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        statements = 0

        def count(execute, sql, params, many, context):
            nonlocal statements
            statements += 1
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count):
            response = self.get_response(request)
        response[HEADER] = str(statements)
        return response
