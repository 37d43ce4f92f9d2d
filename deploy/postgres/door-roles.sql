-- The network doors' login roles under Compose, as services/database_roles.py names them
-- (as under `budget up`): `budget_api`, what the HTTP API and web console connect as,
-- `budget_query`, what the query service (host apps' questions over NATS) connects as,
-- `budget_enforcer`, what the enforcer (host apps' checks over NATS) connects as, and
-- `budget_notifier`, what the notifier (alerts to webhooks, mail, NATS) connects as.
-- They own nothing and may do nothing until `budget migrate` (the migrate service, as the
-- owner `budget`) grants them their reads and their own writes, on every run.
--
-- The postgres image runs it once, when it initialises its volume (after service-role.sql),
-- with psql as the superuser on POSTGRES_DB. On a volume made before it (or before one of
-- its roles) existed, run it once by hand, then `docker compose up -d` (docs/operations.md,
-- "The database passwords"):
--   docker compose exec postgres psql -U postgres -d budget -f /docker-entrypoint-initdb.d/20-door-roles.sql
-- It is idempotent: run again, it sets the passwords of the secrets again.
--
-- Each password is read from the file $BUDGET_API_DATABASE_PASSWORD_FILE,
-- $BUDGET_QUERY_DATABASE_PASSWORD_FILE, $BUDGET_ENFORCER_DATABASE_PASSWORD_FILE or
-- $BUDGET_NOTIFIER_DATABASE_PASSWORD_FILE names (Compose secrets) by psql itself: it
-- appears in no command line or environment variable.
\set ON_ERROR_STOP on

\set password `cat "$BUDGET_API_DATABASE_PASSWORD_FILE"`
SELECT :'password' = '' AS no_password \gset
\if :no_password
DO $$ BEGIN RAISE EXCEPTION 'the HTTP API''s database password is empty or unreadable: put it in the file BUDGET_API_DATABASE_PASSWORD_FILE names (./secrets/budget_api_database_password)'; END $$;
\endif
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'budget_api') AS no_role \gset
\if :no_role
CREATE ROLE budget_api;
\endif
ALTER ROLE budget_api LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'password';

\set password `cat "$BUDGET_QUERY_DATABASE_PASSWORD_FILE"`
SELECT :'password' = '' AS no_password \gset
\if :no_password
DO $$ BEGIN RAISE EXCEPTION 'the query service''s database password is empty or unreadable: put it in the file BUDGET_QUERY_DATABASE_PASSWORD_FILE names (./secrets/budget_query_database_password)'; END $$;
\endif
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'budget_query') AS no_role \gset
\if :no_role
CREATE ROLE budget_query;
\endif
ALTER ROLE budget_query LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'password';

\set password `cat "$BUDGET_ENFORCER_DATABASE_PASSWORD_FILE"`
SELECT :'password' = '' AS no_password \gset
\if :no_password
DO $$ BEGIN RAISE EXCEPTION 'the enforcer''s database password is empty or unreadable: put it in the file BUDGET_ENFORCER_DATABASE_PASSWORD_FILE names (./secrets/budget_enforcer_database_password)'; END $$;
\endif
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'budget_enforcer') AS no_role \gset
\if :no_role
CREATE ROLE budget_enforcer;
\endif
ALTER ROLE budget_enforcer LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'password';

\set password `cat "$BUDGET_NOTIFIER_DATABASE_PASSWORD_FILE"`
SELECT :'password' = '' AS no_password \gset
\if :no_password
DO $$ BEGIN RAISE EXCEPTION 'the notifier''s database password is empty or unreadable: put it in the file BUDGET_NOTIFIER_DATABASE_PASSWORD_FILE names (./secrets/budget_notifier_database_password)'; END $$;
\endif
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'budget_notifier') AS no_role \gset
\if :no_role
CREATE ROLE budget_notifier;
\endif
ALTER ROLE budget_notifier LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'password';
\unset password
