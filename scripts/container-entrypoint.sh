#!/bin/sh
# The services image's entrypoint. The password of the process's database role, a Compose
# secret mounted at $BUDGET_DATABASE_PASSWORD_FILE (deploy/postgres/service-role.sql gives
# the services' role `budget` the same one, door-roles.sql the API's `budget_api` its own),
# becomes a libpq pgpass file (0600) that $PGPASSFILE names: the password is in no URL and
# no environment variable.
# Then it runs the command.
set -eu
if [ -n "${BUDGET_DATABASE_PASSWORD_FILE:-}" ]; then
    PGPASSFILE="${PGPASSFILE:-$HOME/.pgpass}"
    export PGPASSFILE
    # pgpass escapes ':' and '\' with a backslash.
    password="$(sed 's/[\\:]/\\&/g' "$BUDGET_DATABASE_PASSWORD_FILE")"
    (umask 077 && printf '*:*:*:*:%s\n' "$password" > "$PGPASSFILE")
    unset password
fi
exec "$@"
