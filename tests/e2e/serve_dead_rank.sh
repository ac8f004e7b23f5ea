#!/usr/bin/env bash
# A rank of `mpirun -np 4 epserve serve` fails while a request streams, two
# ways: killed (kill -9; mpirun notices and ends the job) and stuck (SIGSTOP;
# the engine's step watchdog notices within --step-timeout 3 s). Either way:
# the client gets an error (an error chunk or a broken connection), not a
# hang; /health is 503 or the server is gone; mpirun exits non-zero within
# the bound; stderr names the rank. For the stuck rank the error chunk itself
# names it (the engine answered every request). Bounded: < 60 s in all.
set -uo pipefail
bin=$1
tmp=$(mktemp -d)
server_pid=
client_pid=
victim=
cleanup() {
  [[ -n $client_pid ]] && kill "$client_pid" 2> /dev/null
  [[ -n $victim ]] && kill -KILL "$victim" 2> /dev/null
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2> /dev/null; then
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

scenario() { # scenario KILL|STOP
  local sig=$1 how
  [[ $sig == KILL ]] && how=killed || how=stuck
  timeout 50 mpirun -np 4 --oversubscribe "$bin" serve --model tiny-qwen3-moe --port 0 \
    --step-timeout 3 > "$tmp/serve.out" 2> "$tmp/serve.err" &
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

  # A long streamed request; once its first chunk arrived, rank 2 fails.
  local start=$SECONDS
  rm -f "$tmp/stream.sse" "$tmp/curl.rc"
  (curl -s -N --max-time 40 -H 'Content-Type: application/json' \
    --data-binary '{"prompt": [1, 2, 3], "max_tokens": 3000, "ignore_eos": true, "stream": true}' \
    "$url/v1/completions" > "$tmp/stream.sse"; echo $? > "$tmp/curl.rc") &
  client_pid=$!
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

  wait $client_pid
  client_pid=
  local curl_rc client_s got_error=0 health rc stopped=0
  curl_rc=$(cat "$tmp/curl.rc")
  client_s=$((SECONDS - start))
  if grep -q '"error"' "$tmp/stream.sse" || [[ $curl_rc != 0 && $curl_rc != 28 ]]; then got_error=1; fi
  check "$([[ $got_error == 1 && $client_s -lt 30 ]] && echo 1 || echo 0)" \
    "$how: the client got an error, not a hang (curl rc $curl_rc after ${client_s} s)"
  if [[ $sig == STOP ]]; then
    check "$(grep -q '"error"' "$tmp/stream.sse" && grep -q '^data: \[DONE\]' "$tmp/stream.sse" && echo 1 || echo 0)" \
      "$how: an error chunk, then [DONE]: $(grep -o '"message":"[^"]*"' "$tmp/stream.sse" | head -1)"
  fi
  health=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url/health")
  check "$([[ $health == 503 || $health == 000 ]] && echo 1 || echo 0)" "$how: /health is 503 or the server is gone ($health)"
  for _ in $(seq 300); do kill -0 $server_pid 2> /dev/null || { stopped=1; break; }; sleep 0.1; done
  wait $server_pid 2> /dev/null
  rc=$?
  server_pid=
  kill -KILL "$victim" 2> /dev/null
  victim=
  check "$([[ $stopped == 1 && $rc != 0 ]] && echo 1 || echo 0)" \
    "$how: mpirun exited non-zero within the bound (exit $rc, $((SECONDS - start)) s)"
  # A rank stuck inside a MoE layer's exchange cannot be told apart from the
  # others by rank 0 (every rank took the step); the engine then says
  # "rank(s) unknown". That case is reported, not failed (docs/serving.md).
  if [[ $sig == STOP ]] && ! grep -qE 'rank 2|rank\(s\) 2' "$tmp/serve.err" &&
    grep -q 'rank(s) unknown' "$tmp/serve.err"; then
    echo "note  $how: the engine could not name the stuck rank: $(grep -m1 -o 'step [0-9]* did not finish.*' "$tmp/serve.err")"
  else
    check "$(grep -qE 'rank 2|rank\(s\) 2' "$tmp/serve.err" && echo 1 || echo 0)" \
      "$how: stderr names rank 2: $(grep -m1 -E 'rank 2|rank\(s\) 2' "$tmp/serve.err")"
  fi
  [[ $failures != 0 ]] && tail -20 "$tmp/serve.err"
}

scenario KILL
scenario STOP
if [[ $failures != 0 ]]; then exit 1; fi
echo "all dead-rank checks passed"
