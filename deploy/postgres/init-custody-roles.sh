#!/bin/sh
# docker-entrypoint-initdb.d hook (docker-compose.yml): runs once, on an empty data volume, as
# the bootstrap superuser, and hands the database to custody_owner (see roles.sql).
set -eu
psql --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner_password="$CUSTODY_OWNER_DB_PASSWORD" \
    -v app_password="$CUSTODY_APP_DB_PASSWORD" \
    -v database="$POSTGRES_DB" \
    -f /custody/roles.sql
