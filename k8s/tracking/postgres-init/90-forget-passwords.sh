# Sourced, not executed (the ConfigMap volume gives this file no execute bit), by the postgres
# image's entrypoint after the scripts before it, on first start only: the entrypoint has read
# POSTGRES_PASSWORD_FILE into POSTGRES_PASSWORD for initdb and would pass it on to the server it
# then starts, for that server's lifetime. Unset here, no PostgreSQL process keeps it.
unset POSTGRES_PASSWORD
