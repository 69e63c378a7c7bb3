-- Custody's database roles (README: "Database roles"). Idempotent; run as a superuser with psql:
--
--   psql -v owner_password=… -v app_password=… [-v database=custody] -f deploy/postgres/roles.sql
--
-- custody_owner owns the schema: `migrate` and `setup_db_roles` run as it, nothing else does.
-- custody_app is what web, workers and beat log in as: DML only, owns nothing, so it can
-- neither disable the evidence log's triggers nor TRUNCATE, UPDATE or DELETE evidence.
\set ON_ERROR_STOP on

SELECT 'CREATE ROLE custody_owner'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'custody_owner') \gexec
SELECT 'CREATE ROLE custody_app'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'custody_app') \gexec

ALTER ROLE custody_owner WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS
    PASSWORD :'owner_password';
ALTER ROLE custody_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT
    PASSWORD :'app_password';

\if :{?database}
-- The database and its public schema (PostgreSQL 15: owned by the database owner) belong to
-- custody_owner; custody_app may connect and use the schema, not create in it.
ALTER DATABASE :"database" OWNER TO custody_owner;
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO custody_owner, custody_app;
\connect :"database"
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO custody_app;
-- Every table migrate creates from now on is DML-able by the app; `setup_db_roles` (run after
-- each migrate) then narrows the evidence log to INSERT and SELECT.
ALTER DEFAULT PRIVILEGES FOR ROLE custody_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO custody_app;
ALTER DEFAULT PRIVILEGES FOR ROLE custody_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO custody_app;
\endif
