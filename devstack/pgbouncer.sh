#!/usr/bin/env bash
# Start PgBouncer in transaction mode (what Supabase's pooler on port 6543 is) in front of a
# Postgres, with fewer server connections than the tests' client threads.
# Usage: devstack/pgbouncer.sh start|stop [LISTEN_PORT] [UPSTREAM_HOST] [UPSTREAM_PORT]
set -euo pipefail
action=${1:-start}
port=${2:-6432}
upstream_host=${3:-127.0.0.1}
upstream_port=${4:-5432}
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
ignore_startup_parameters = extra_float_digits,options,application_name
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
unix_socket_dir =
INI
# PgBouncer refuses to run as root; run it as the postgres user where we are root.
run_as=()
if [ "$(id -u)" = 0 ]; then
  chown -R postgres "$dir"
  run_as=(-u postgres)
fi
"$(command -v pgbouncer)" -d "${run_as[@]}" "$dir/pgbouncer.ini"
for _ in $(seq 50); do
  (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "pgbouncer on 127.0.0.1:$port (transaction mode, 3 server connections)"; exit 0; }
  sleep 0.1
done
echo "pgbouncer did not start; see $dir/pgbouncer.log" >&2
exit 1
