#!/usr/bin/env bash
# Runs Nchan for switchyard-bench: nginx with bench/nchan/nginx.conf.template on
# 127.0.0.1:PORT, in the foreground, with its pid file, temp files and error log in DIR (a
# fresh temporary directory by default). Once both workers are started it prints
#   NCHAN_URL=http://127.0.0.1:PORT
#   NCHAN_MASTER_PID=...
#   NCHAN_PIDS=W1,W2          (give these to `switchyard-bench ... --pid`)
#   NCHAN_DIR=DIR
# and stays until nginx exits: Ctrl-C, SIGTERM, or `nginx -p DIR -c DIR/nginx.conf -s stop`.
#
# Needs nginx and Nchan: apt-get install nginx-light libnginx-mod-nchan. NCHAN_MODULE
# overrides the module's path (default: Debian's).
set -euo pipefail

usage="usage: bench/nchan/run.sh PORT [DIR]"
port=${1:?$usage}
dir=${2:-$(mktemp -d "${TMPDIR:-/tmp}/nchan-bench.XXXXXX")}
module=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v nginx >/dev/null 2>&1; then
  echo "nginx is not installed: apt-get install nginx-light libnginx-mod-nchan" >&2
  exit 1
fi
if [ ! -f "$module" ]; then
  echo "no Nchan module at $module: apt-get install libnginx-mod-nchan (or set NCHAN_MODULE)" >&2
  exit 1
fi
case "$port" in
  '' | *[!0-9]*) echo "$usage (PORT must be a number)" >&2; exit 1 ;;
esac

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sed -e "s#__PORT__#$port#g" -e "s#__DIR__#$dir#g" -e "s#__MODULE__#$module#g" \
  "$here/nginx.conf.template" > "$dir/nginx.conf"
: > "$dir/error.log"

# -e stderr: nginx opens no log under /var/log/nginx, even before it reads the config.
nginx -p "$dir" -c "$dir/nginx.conf" -e stderr 2>> "$dir/error.log" &
master=$!
stop() {
  kill -QUIT "$master" 2>/dev/null || true
  wait "$master" 2>/dev/null || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

# The master logs "start worker process PID" for each worker it forks.
workers=""
for _ in $(seq 200); do
  workers=$(grep -o 'start worker process [0-9]*' "$dir/error.log" | awk '{print $4}' | paste -sd, - || true)
  if [ "$(printf '%s' "$workers" | tr ',' '\n' | grep -c .)" -ge 2 ]; then
    break
  fi
  if ! kill -0 "$master" 2>/dev/null; then
    echo "nginx did not start:" >&2
    cat "$dir/error.log" >&2
    exit 1
  fi
  sleep 0.05
done
if [ -z "$workers" ]; then
  echo "nginx started no worker within 10 s:" >&2
  cat "$dir/error.log" >&2
  stop
  exit 1
fi

echo "NCHAN_URL=http://127.0.0.1:$port"
echo "NCHAN_MASTER_PID=$master"
echo "NCHAN_PIDS=$workers"
echo "NCHAN_DIR=$dir"
status=0
wait "$master" || status=$?
exit "$status"
