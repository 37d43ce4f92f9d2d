-- The services' least-privilege role under Compose, made once, when the postgres image
-- initialises its volume: it runs /docker-entrypoint-initdb.d/*.sql with psql, as the
-- superuser (POSTGRES_USER), on POSTGRES_DB (docs/operations.md, "The database passwords").
--
-- The services connect as `budget` (services/postgres_auth.py's SERVICE_ROLE, as under
-- `budget up`): it owns the database, so migrations create their tables in its public
-- schema (owned by the database's owner since PostgreSQL 15), and it is no superuser, so a
-- service taken over cannot run programs on the server (COPY ... TO PROGRAM), read files,
-- create roles or reach other databases. Its password is read from the file that
-- $BUDGET_DATABASE_PASSWORD_FILE names (a Compose secret) by psql itself: it appears in no
-- command line or environment variable (nor in the server log unless it logs statements).
\set ON_ERROR_STOP on
\set password `cat "$BUDGET_DATABASE_PASSWORD_FILE"`
SELECT :'password' = '' AS no_password \gset
\if :no_password
DO $$ BEGIN RAISE EXCEPTION 'the services'' database password is empty or unreadable: put it in the file BUDGET_DATABASE_PASSWORD_FILE names (./secrets/budget_database_password)'; END $$;
\endif
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'budget') AS no_role \gset
\if :no_role
CREATE ROLE budget;
\endif
ALTER ROLE budget LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'password';
\unset password
ALTER DATABASE :"DBNAME" OWNER TO budget;
-- PostgreSQL lets every role connect to (and make temporary tables in) any database: the
-- services' role reaches its own alone.
REVOKE CONNECT, TEMPORARY ON DATABASE postgres, template1 FROM PUBLIC;
