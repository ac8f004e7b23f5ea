# Shared by the e2e tests that run `epserve serve` (sourced, not a test: the
# ctest glob takes tests/e2e/*.sh only). The caller sets `bin` (the epserve
# binary) first. The functions also work under `set -e`. Sourcing makes the scratch directory $tmp, traps EXIT to
# stop every server started here and remove $tmp, and exports what every rank
# needs: Open MPI as root, one BLAS and one pool thread per rank.
set -uo pipefail
tmp=$(mktemp -d)
trap e2e_cleanup EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 EP_NUM_THREADS=1
failures=0
e2e_pids=()

e2e_check() { # e2e_check <0|1> <message>
  if [[ $1 == 1 ]]; then echo "ok    $2"; else echo "FAIL  $2"; failures=$((failures + 1)); fi
}

# e2e_serve_start <name> <np> <serve args...>: `mpirun -np <np> epserve serve
# --port 0 <args>` under a timeout (E2E_SERVE_TIMEOUT seconds, default 300),
# output in $tmp/<name>.out and .err; returns once /health answers 200, with
# the base URL in $url and in $tmp/<name>.url and the mpirun pid in
# $server_pid. Exits the test when the server does not start.
e2e_serve_start() {
  local name=$1 np=$2
  shift 2
  timeout "${E2E_SERVE_TIMEOUT:-300}" mpirun -np "$np" --oversubscribe "$bin" serve --port 0 "$@" \
    > "$tmp/$name.out" 2> "$tmp/$name.err" &
  server_pid=$!
  e2e_pids+=("$server_pid")
  url=
  for _ in $(seq 300); do
    url=$(grep -o 'http://127.0.0.1:[0-9]*' "$tmp/$name.out" 2> /dev/null | head -1 || true)
    [[ -n $url ]] && break
    kill -0 "$server_pid" 2> /dev/null || break
    sleep 0.1
  done
  [[ -n $url ]] || { echo "FAIL  server $name did not start"; cat "$tmp/$name.err"; exit 1; }
  for _ in $(seq 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$url/health") == 200 ]] && break
    sleep 0.1
  done
  echo "$url" > "$tmp/$name.url"
}

# e2e_serve_stop <pid>: SIGTERM, 5 s to exit, then SIGKILL. The signal goes
# to mpirun, which ends the job its own way (it may kill the ranks before
# they finish): a test that needs a normal stop uses e2e_serve_stop_clean.
e2e_serve_stop() {
  local p=$1
  kill -0 "$p" 2> /dev/null || return 0
  kill -TERM "$p" 2> /dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2> /dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2> /dev/null || true
}

# e2e_serve_stop_clean <pid> [seconds]: the user's stop, SIGTERM to rank 0
# (found by OMPI_COMM_WORLD_RANK among mpirun's children), which stops every
# rank and lets serve write what it writes at a normal stop; waits that long
# (default 10) for the job to end, then e2e_serve_stop. Sets $stop_rc to the
# job's exit status (-1: rank 0 not found or the job did not end in time).
e2e_serve_stop_clean() {
  local p=$1 secs=${2:-10} rank0= mp q
  stop_rc=-1
  for mp in $(pgrep -P "$p"); do
    for q in $(pgrep -P "$mp"); do
      tr '\0' '\n' < /proc/$q/environ 2> /dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=0' && rank0=$q
    done
  done
  [[ -n $rank0 ]] || { e2e_serve_stop "$p"; return 0; }
  kill -TERM "$rank0"
  for _ in $(seq $((secs * 10))); do
    if ! kill -0 "$p" 2> /dev/null; then
      wait "$p" 2> /dev/null
      stop_rc=$?
      return 0
    fi
    sleep 0.1
  done
  e2e_serve_stop "$p"
}

# Stops every server this test started and removes $tmp (trap it on EXIT).
e2e_cleanup() {
  for p in "${e2e_pids[@]}"; do e2e_serve_stop "$p"; done
  rm -rf "$tmp"
}
