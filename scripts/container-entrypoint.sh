#!/bin/sh
# The services image's entrypoint. The password of the services' database role, a Compose
# secret mounted at $BUDGET_DATABASE_PASSWORD_FILE (deploy/postgres/service-role.sql gives
# the role the same one), becomes a libpq pgpass file (0600) that $PGPASSFILE names: the
# password is in no URL and no environment variable.
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
