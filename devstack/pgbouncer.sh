#!/usr/bin/env bash
# Start PgBouncer in transaction mode (what Supabase's pooler on port 6543 is) in front of a
# Postgres, with fewer server connections than the tests' client threads.
# Usage: devstack/pgbouncer.sh start|stop [LISTEN_PORT] [UPSTREAM_HOST] [UPSTREAM_PORT] [RUN_AS]
# UPSTREAM_HOST may be a Unix socket folder; RUN_AS is the user PgBouncer runs as when started
# by root (it refuses root itself), and must be able to reach that socket.
set -euo pipefail
action=${1:-start}
port=${2:-6432}
upstream_host=${3:-127.0.0.1}
upstream_port=${4:-5432}
run_user=${5:-postgres}
dir=${PGBOUNCER_DIR:-/tmp/genjobs-pgbouncer-$port}

if [ "$action" = stop ]; then
  [ -f "$dir/pgbouncer.pid" ] && kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
  exit 0
fi

command -v pgbouncer >/dev/null || { echo "pgbouncer is not installed (Debian: apt-get install pgbouncer)" >&2; exit 1; }
mkdir -p "$dir"
cat > "$dir/pgbouncer.ini" <<INI
[databases]
* = host=$upstream_host port=$upstream_port user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
auth_type = any
pool_mode = transaction
default_pool_size = 3
max_client_conn = 500
server_reset_query =
# After a Postgres restart: retry the server login every second, and give a waiting client
# an error after 10 s instead of holding it for PgBouncer's default two minutes.
server_login_retry = 1
query_wait_timeout = 10
ignore_startup_parameters = extra_float_digits,options,application_name
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
unix_socket_dir =
INI
# PgBouncer refuses to run as root; run it as the postgres user where we are root.
run_as=()
if [ "$(id -u)" = 0 ]; then
  chown -R "$run_user" "$dir"
  run_as=(-u "$run_user")
fi
"$(command -v pgbouncer)" -d "${run_as[@]}" "$dir/pgbouncer.ini"
for _ in $(seq 50); do
  (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "pgbouncer on 127.0.0.1:$port (transaction mode, 3 server connections)"; exit 0; }
  sleep 0.1
done
echo "pgbouncer did not start; see $dir/pgbouncer.log" >&2
exit 1
