# Shell functions that start a PostgreSQL or Redis server of the caller's own on 127.0.0.1
# (data in a directory the caller owns and removes). Sourced by with-services.sh and cluster.sh.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_postgres DIR: initdb into DIR/data (trust authentication, user roomcast), start the
# server on a free port; sets pg_port and pg_url, and waits until it answers.
start_postgres() {
  local dir=$1 bin
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; chmod 755 "$(dirname "$dir")"; fi
  pg_port=$(free_port)
  _as_postgres "$bin/initdb" -A trust -U roomcast -E UTF8 --no-sync -D "$dir/data" >/dev/null
  _as_postgres "$bin/postgres" -D "$dir/data" -p "$pg_port" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$dir" -c fsync=off -c max_connections=300 >"$dir/log" 2>&1 &
  for _ in $(seq 100); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break
    sleep 0.1
  done
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" || { cat "$dir/log"; return 1; }
  pg_url="postgres://roomcast@127.0.0.1:$pg_port/postgres"
}

# stop_postgres DIR: stops the server start_postgres started in DIR (by its PID).
stop_postgres() {
  local pid
  pid=$(head -1 "$1/data/postmaster.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
}

# start_redis DIR: a redis-server without persistence on a free port; sets redis_port,
# redis_url and redis_pid.
start_redis() {
  local dir=$1
  command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)"; return 1; }
  mkdir -p "$dir"
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    >"$dir/log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break
    sleep 0.1
  done
  redis_url="redis://127.0.0.1:$redis_port/"
}

_as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
