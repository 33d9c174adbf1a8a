#!/usr/bin/env bash
# The databases and roles of a cme installation, on a fresh PostgreSQL. The postgres image
# runs it once, on an empty data volume (/docker-entrypoint-initdb.d); run it by hand the
# same way against any server (PGHOST, POSTGRES_USER: a role that may create roles and
# databases, e.g. a managed server's admin). Idempotent: it creates only what is missing,
# sets the passwords and the grants again (so it also rotates the passwords).
#
#   CME_DB_NAME     the label registry (owner: CME_DB_OWNER, who runs `cme db upgrade`;
#                   the workers connect as CME_DB_USER: rows only, no DDL)
#   MLFLOW_DB_NAME / MLFLOW_AUTH_DB_NAME   MLflow's tracking store and user store (MLFLOW_DB_USER)
#   PREFECT_DB_NAME                        Prefect's server database (PREFECT_DB_USER)
set -euo pipefail

: "${CME_DB_NAME:=cme}" "${CME_DB_OWNER:=cme_owner}" "${CME_DB_USER:=cme_app}"
: "${MLFLOW_DB_NAME:=mlflow}" "${MLFLOW_AUTH_DB_NAME:=mlflow_auth}" "${MLFLOW_DB_USER:=mlflow}"
: "${PREFECT_DB_NAME:=prefect}" "${PREFECT_DB_USER:=prefect}"
: "${CME_DB_OWNER_PASSWORD:?}" "${CME_DB_PASSWORD:?}" "${MLFLOW_DB_PASSWORD:?}" "${PREFECT_DB_PASSWORD:?}"

sql() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}" "$@"
}

sql --dbname "${POSTGRES_DB:-postgres}" \
    -v owner="$CME_DB_OWNER" -v owner_password="$CME_DB_OWNER_PASSWORD" \
    -v app="$CME_DB_USER" -v app_password="$CME_DB_PASSWORD" \
    -v mlflow="$MLFLOW_DB_USER" -v mlflow_password="$MLFLOW_DB_PASSWORD" \
    -v prefect="$PREFECT_DB_USER" -v prefect_password="$PREFECT_DB_PASSWORD" \
    -v cme_db="$CME_DB_NAME" -v mlflow_db="$MLFLOW_DB_NAME" \
    -v mlflow_auth_db="$MLFLOW_AUTH_DB_NAME" -v prefect_db="$PREFECT_DB_NAME" <<'SQL'
-- Roles: created when missing, their password (re)set from the environment either way.
SELECT format('CREATE ROLE %I LOGIN', name) FROM (VALUES (:'owner'), (:'app'), (:'mlflow'),
    (:'prefect')) AS wanted(name)
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) \gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', name, secret)
FROM (VALUES (:'owner', :'owner_password'), (:'app', :'app_password'),
             (:'mlflow', :'mlflow_password'), (:'prefect', :'prefect_password'))
     AS wanted(name, secret) \gexec

SELECT format('CREATE DATABASE %I OWNER %I', db, owner)
FROM (VALUES (:'cme_db', :'owner'), (:'mlflow_db', :'mlflow'),
             (:'mlflow_auth_db', :'mlflow'), (:'prefect_db', :'prefect')) AS wanted(db, owner)
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = db) \gexec
-- A database that existed before (created by hand, another owner) is handed over too;
-- tables created by an earlier owner need `REASSIGN OWNED BY old TO owner` once.
SELECT format('ALTER DATABASE %I OWNER TO %I', db, owner)
FROM (VALUES (:'cme_db', :'owner'), (:'mlflow_db', :'mlflow'),
             (:'mlflow_auth_db', :'mlflow'), (:'prefect_db', :'prefect')) AS wanted(db, owner)
\gexec

-- Nobody but a database's owner connects to it, except the label registry's app user.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', db)
FROM (VALUES (:'cme_db'), (:'mlflow_db'), (:'mlflow_auth_db'), (:'prefect_db')) AS d(db) \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', :'cme_db', :'app') \gexec
SQL

# In the label registry: the owner holds the schema and runs the migrations; the app user
# reads and writes rows of whatever tables the owner creates, and can create nothing.
sql --dbname "$CME_DB_NAME" -v owner="$CME_DB_OWNER" -v app="$CME_DB_USER" <<'SQL'
SELECT format('ALTER SCHEMA public OWNER TO %I', :'owner') \gexec
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'app') \gexec
SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public '
              'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', :'owner', :'app') \gexec
SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public '
              'GRANT USAGE, SELECT ON SEQUENCES TO %I', :'owner', :'app') \gexec
SELECT format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %I',
              :'app') \gexec
SELECT format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I', :'app') \gexec
SQL

echo "databases ${CME_DB_NAME}, ${MLFLOW_DB_NAME}, ${MLFLOW_AUTH_DB_NAME}, ${PREFECT_DB_NAME} ready"
