#!/bin/bash
# One role and one database per bounded context: auth, calendar, email, push, hospital.
#
# The postgres image runs this once, on the first start of an empty data volume (it is
# mounted into /docker-entrypoint-initdb.d). Each context's role owns its database and
# nothing else, and no other role may connect to it, so a service cannot read another
# context's tables. The passwords come from <CONTEXT>_DB_PASSWORD (compose passes them
# to this container and the same values inside each service's DATABASE_URL).
#
# To rerun it, remove the volume: docker compose -f compose/docker-compose.yml down -v
set -euo pipefail

for context in auth calendar email push hospital; do
    password_var="${context^^}_DB_PASSWORD"
    password="${!password_var:?$password_var must be set}"
    echo "mesh: creating role and database ${context}"
    # psql variables (:"name" quotes an identifier, :'name' a literal) keep the values
    # out of the SQL text.
    psql --no-psqlrc -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" \
        --dbname "${POSTGRES_DB:-postgres}" \
        -v context="$context" -v password="$password" <<'SQL'
CREATE ROLE :"context" LOGIN PASSWORD :'password';
CREATE DATABASE :"context" OWNER :"context";
REVOKE ALL ON DATABASE :"context" FROM PUBLIC;
SQL
done
