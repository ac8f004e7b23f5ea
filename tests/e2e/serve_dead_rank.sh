#!/usr/bin/env bash
# A rank of `mpirun -np 4 epserve serve` fails while requests run, two ways:
# killed (kill -9: mpirun sends SIGTERM to the others; rank 0 listens for
# heartbeats and names the silent rank long before its 30 s step deadline)
# and stuck (SIGSTOP: rank 0's step deadline, --step-timeout 3, and the
# heartbeats name it). Either way: the
# streamed request in flight gets an error chunk then [DONE], the
# non-streamed one a 5xx with an OpenAI error object, a new request and
# /health get 503, mpirun exits non-zero within the bound, and rank 0's own
# message names rank 2. Loopback only; bounded: < 90 s in all.
set -uo pipefail
bin=$1
tmp=$(mktemp -d)
server_pid=
victim=
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null; done
  [[ -n $victim ]] && kill -KILL "$victim" 2> /dev/null
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2> /dev/null; then
    # timeout's child is mpirun: SIGTERM lets it end its ranks.
    local mp
    mp=$(pgrep -P "$server_pid")
    [[ -n $mp ]] && kill -TERM $mp 2> /dev/null && sleep 1
    [[ -n $mp ]] && kill -KILL $mp 2> /dev/null
    kill -KILL "$server_pid" 2> /dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
failures=0
check() {
  if [[ $1 == 1 ]]; then echo "ok    $2"; else echo "FAIL  $2"; failures=$((failures + 1)); fi
}
long='{"prompt": [1, 2, 3], "max_tokens": 3000, "ignore_eos": true'

scenario() { # scenario KILL|STOP
  local sig=$1 how step_timeout bound
  # A killed rank must be named from mpirun's SIGTERM (the step deadline is
  # far away); a stuck one by the step deadline.
  if [[ $sig == KILL ]]; then how=killed step_timeout=30 bound=10; else how=stuck step_timeout=3 bound=12; fi
  # odls_base_sigkill_timeout 3: after a rank died mpirun sends SIGCONT, then
  # SIGTERM 3 s later, then SIGKILL 3 s after that; rank 0 answers between
  # the two (docs/serving.md).
  timeout 60 mpirun -np 4 --oversubscribe --mca odls_base_sigkill_timeout 3 "$bin" serve \
    --model tiny-qwen3-moe --port 0 --step-timeout $step_timeout > "$tmp/serve.out" 2> "$tmp/serve.err" &
  server_pid=$!
  local url=
  for _ in $(seq 300); do
    url=$(grep -o 'http://127.0.0.1:[0-9]*' "$tmp/serve.out" 2> /dev/null | head -1)
    [[ -n $url ]] && break
    kill -0 $server_pid 2> /dev/null || break
    sleep 0.1
  done
  if [[ -z $url ]]; then check 0 "$how: server started"; cat "$tmp/serve.err"; return; fi
  for _ in $(seq 100); do curl -sf "$url/health" > /dev/null && break; sleep 0.1; done

  # Two long requests in flight, one streamed; once the stream has started,
  # rank 2 fails.
  local start=$SECONDS
  rm -f "$tmp"/stream.* "$tmp"/plain.*
  (curl -s -N --max-time 40 -H 'Content-Type: application/json' \
    --data-binary "$long, \"stream\": true}" "$url/v1/completions" > "$tmp/stream.sse"
  echo $? > "$tmp/stream.rc") &
  pids+=($!)
  (curl -s --max-time 40 -o "$tmp/plain.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "$long}" "$url/v1/completions" > "$tmp/plain.code"
  echo $? > "$tmp/plain.rc") &
  pids+=($!)
  for _ in $(seq 100); do grep -q '^data: ' "$tmp/stream.sse" 2> /dev/null && break; sleep 0.1; done
  victim=
  for mp in $(pgrep -P $server_pid); do
    for p in $(pgrep -P "$mp"); do
      tr '\0' '\n' < /proc/$p/environ 2> /dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=2' && victim=$p
    done
  done
  check "$([[ -n $victim ]] && grep -q '^data: ' "$tmp/stream.sse" && echo 1 || echo 0)" \
    "$how: the stream started; rank 2 is pid ${victim:-?}"
  [[ -n $victim ]] && kill -$sig "$victim"

  # The stream ends first (its error chunk), then a new request and /health
  # while rank 0 still answers (it lingers 1.5 s before exiting).
  for _ in $(seq 400); do [[ -s $tmp/stream.rc ]] && break; sleep 0.05; done
  local new_code health
  new_code=$(curl -s -o "$tmp/new.json" -w '%{http_code}' --max-time 5 \
    -H 'Content-Type: application/json' --data-binary "$long}" "$url/v1/completions")
  health=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url/health")
  wait "${pids[@]}" 2> /dev/null
  pids=()
  local client_s=$((SECONDS - start)) rc stopped=0
  check "$([[ -s $tmp/stream.rc && $client_s -le $bound ]] && grep -q '"error"' "$tmp/stream.sse" &&
    grep -q '^data: \[DONE\]' "$tmp/stream.sse" && echo 1 || echo 0)" \
    "$how: streamed: an error chunk, then [DONE] (after ${client_s} s, bound $bound s): $(grep -o '"message":"[^"]*"' "$tmp/stream.sse" | head -1)"
  local plain_code
  plain_code=$(cat "$tmp/plain.code" 2> /dev/null)
  check "$([[ $plain_code == 5* ]] && grep -q '"error"' "$tmp/plain.json" && echo 1 || echo 0)" \
    "$how: non-streamed: HTTP ${plain_code:-none} with an error object"
  check "$([[ $new_code == 503 ]] && echo 1 || echo 0)" "$how: a new request gets 503 ($new_code)"
  check "$([[ $health == 503 ]] && echo 1 || echo 0)" "$how: /health is 503 ($health)"
  for _ in $(seq 300); do kill -0 $server_pid 2> /dev/null || { stopped=1; break; }; sleep 0.1; done
  wait $server_pid 2> /dev/null
  rc=$?
  server_pid=
  kill -KILL "$victim" 2> /dev/null
  victim=
  check "$([[ $stopped == 1 && $rc != 0 ]] && echo 1 || echo 0)" \
    "$how: mpirun exited non-zero within the bound (exit $rc, $((SECONDS - start)) s)"
  # Our own message (not mpirun's) names the rank.
  check "$(grep -qE '^epserve serve: rank 0: .*rank\(s\) 2([^0-9]|$)' "$tmp/serve.err" && echo 1 || echo 0)" \
    "$how: rank 0 names rank 2: $(grep -m1 '^epserve serve: rank 0:' "$tmp/serve.err")"
  [[ $failures != 0 || -n ${VERBOSE:-} ]] && tail -20 "$tmp/serve.err"
}

scenario KILL
[[ ${ONLY:-} == KILL ]] || scenario STOP
if [[ $failures != 0 ]]; then exit 1; fi
echo "all dead-rank checks passed"
