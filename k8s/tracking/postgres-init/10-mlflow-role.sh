#!/bin/bash
# PostgreSQL's first start (/docker-entrypoint-initdb.d, run by the postgres image's entrypoint
# as the superuser over the local socket): the role the tracking server connects as. It may log
# in and owns its two databases (runs and metrics; MLflow's users and grants), nothing more: not
# a superuser, cannot create roles or databases, and no other role may connect to them.
# The password comes from the mlflow-database Secret, mounted as the file MLFLOW_DB_PASSWORD_FILE
# names: psql reads it itself (the backquoted \set), so it is never in an environment variable
# or on a command line; psql's :'var' quoting keeps any character safe.
set -euo pipefail
if [ ! -s "${MLFLOW_DB_PASSWORD_FILE:?}" ]; then
  echo "error: MLFLOW_DB_PASSWORD_FILE ($MLFLOW_DB_PASSWORD_FILE) is missing or empty" >&2
  exit 1
fi
psql -v ON_ERROR_STOP=1 --no-psqlrc --dbname postgres \
  -v role="$MLFLOW_DB_USER" -v password_file="$MLFLOW_DB_PASSWORD_FILE" \
  -v tracking_db="$MLFLOW_DB_NAME" -v auth_db="$MLFLOW_AUTH_DB_NAME" <<'SQL'
\set password `cat :'password_file'`
CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
  PASSWORD :'password';
CREATE DATABASE :"tracking_db" OWNER :"role";
CREATE DATABASE :"auth_db" OWNER :"role";
REVOKE ALL ON DATABASE :"tracking_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"auth_db" FROM PUBLIC;
\connect :"tracking_db"
ALTER SCHEMA public OWNER TO :"role";
\connect :"auth_db"
ALTER SCHEMA public OWNER TO :"role";
SQL
echo "created role $MLFLOW_DB_USER owning databases $MLFLOW_DB_NAME and $MLFLOW_AUTH_DB_NAME"
