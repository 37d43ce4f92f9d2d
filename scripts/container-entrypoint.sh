#!/bin/sh
# The services image's entrypoint. The PostgreSQL password, a Compose secret mounted at
# $POSTGRES_PASSWORD_FILE (as the postgres image reads it too), becomes a libpq pgpass file
# (0600) that $PGPASSFILE names: the password is in no URL and no environment variable.
# Then it runs the command.
set -eu
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    PGPASSFILE="${PGPASSFILE:-$HOME/.pgpass}"
    export PGPASSFILE
    # pgpass escapes ':' and '\' with a backslash.
    password="$(sed 's/[\\:]/\\&/g' "$POSTGRES_PASSWORD_FILE")"
    (umask 077 && printf '*:*:*:*:%s\n' "$password" > "$PGPASSFILE")
    unset password
fi
exec "$@"
