#!/usr/bin/env bash
# Two real hosts on one machine (scripts/netns-hosts.sh: network + UTS
# namespaces ephost0/ephost1, one veth each into a bridge, mpirun over TCP
# only), 2 ranks per host, node identity from the host names:
# 1. `epserve bench --check --phase-barrier` (tiny Qwen3 preset, baseline
#    and ban) passes:
#    no wrong token, error <= 1e-4, planned == measured bytes, and bench saw
#    2 nodes of 2 ranks without --ranks-per-node;
# 2. the inter-node payload bench reports equals what the veths carried,
#    less an empty run's bytes (--tokens 0: the same collectives, no payload),
#    within the TCP/IP headers of the extra packets (66 bytes each: Ethernet
#    14 + IPv4 20 + TCP with timestamps 32) plus 2 % for MPI's own headers.
# Once bench has --dispatch (hier | flat), both run besides the default.
# Without namespaces (not root, no CAP_NET_ADMIN, no `ip`) it exits 77.
set -euo pipefail
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
root=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
hosts="$root/scripts/netns-hosts.sh"

dispatch=("")
if "$bin" bench --help | grep -q -- '--dispatch'; then
  dispatch+=(hier flat)
fi

run() { # run NAME STATS BENCH_ARGS...: bench across 2 hosts x 2 ranks
  local name=$1 stats=$2
  shift 2
  local rc=0
  "$hosts" --hosts 2 --slots 2 --stats "$stats" -- "$bin" bench --model tiny-qwen3-moe \
    --quiet --json "$tmp/$name.json" "$@" > "$tmp/$name.log" 2>&1 || rc=$?
  if [ "$rc" = 77 ]; then
    cat "$tmp/$name.log"
    echo "SKIP: $(grep 'SKIP' "$tmp/$name.log" | head -1)"
    exit 77
  fi
  if [ "$rc" != 0 ]; then
    cat "$tmp/$name.log"
    echo "FAIL: $name exited $rc"
    exit 1
  fi
}

for d in "${dispatch[@]}"; do
  tag=${d:-default}
  opt=()
  [ -z "$d" ] || opt=(--dispatch "$d")
  run "check-$tag" "$tmp/check-$tag.stats" "${opt[@]}" --routing baseline,ban --tokens 16 \
    --steps 1 --warmup 0 --check --phase-barrier
  run "bytes-$tag" "$tmp/bytes-$tag.stats" "${opt[@]}" --routing baseline,ban --tokens 32 \
    --steps 2 --warmup 0
  run "empty-$tag" "$tmp/empty-$tag.stats" "${opt[@]}" --routing baseline,ban --tokens 0 \
    --steps 2 --warmup 0
done

python3 - "$tmp" "${dispatch[@]:-}" <<'PY'
import json, sys
tmp = sys.argv[1]
modes = [m or "default" for m in (sys.argv[2:] or [""])]
failures = passes = 0
def check(ok, msg):
    global failures, passes
    print(("ok    " if ok else "FAIL  ") + msg)
    failures += not ok
    passes += bool(ok)
def veth(name):  # bytes and packets the hosts' eth0 sent (each is another's rx)
    b = p = 0
    for line in open(f"{tmp}/{name}.stats"):
        host, rx_b, tx_b, rx_p, tx_p = line.split()
        b += int(tx_b)
        p += int(tx_p)
    return b, p
for m in modes:
    d = json.load(open(f"{tmp}/check-{m}.json"))
    check(d["n_nodes"] == 2 and d["ranks_per_node"] == 2,
          f'{m}: {d["n_nodes"]} nodes of {d["ranks_per_node"]} ranks from the host names (2 of 2)')
    for p in d["policies"]:
        tag = f'{m} {p["name"]}'
        check(p["wrong"] == 0 and p["checked_tokens"] > 0,
              f'{tag}: #wrong {p["wrong"]} of {p["checked_tokens"]} checked')
        check(p["max_rel_err"] <= 1e-4, f'{tag}: max_rel_err {p["max_rel_err"]:.3e} <= 1e-4')
        check(p["planned_bytes"] == p["measured_bytes"],
              f'{tag}: planned {p["planned_bytes"]} == measured {p["measured_bytes"]}')
        check(p["inter_node_bytes"] > 0, f'{tag}: inter-node bytes {p["inter_node_bytes"]} > 0')
    full = json.load(open(f"{tmp}/bytes-{m}.json"))
    empty = json.load(open(f"{tmp}/empty-{m}.json"))
    payload = sum(p["inter_node_bytes"] for p in full["policies"])
    check(sum(p["inter_node_bytes"] for p in empty["policies"]) == 0,
          f'{m}: the empty run reports no inter-node payload')
    (fb, fp), (eb, ep) = veth(f"bytes-{m}"), veth(f"empty-{m}")
    extra, extra_pk = fb - eb, fp - ep
    headers = 66 * max(extra_pk, 0)
    print(f'      {m}: veth {fb} B in {fp} packets, empty run {eb} B in {ep} packets; '
          f'payload {payload} B, extra {extra} B = payload + {extra - payload} B '
          f'({extra_pk} packets, {headers} B of TCP/IP headers)')
    check(payload <= extra <= payload * 1.02 + headers,
          f'{m}: veth bytes beyond the empty run ({extra}) within [payload {payload}, '
          f'payload x 1.02 + headers {int(payload * 1.02 + headers)}]')
if len(modes) == 3:
    inter = {m: sum(p["inter_node_bytes"] for p in json.load(open(f"{tmp}/bytes-{m}.json"))["policies"])
             for m in modes}
    check(inter["hier"] <= inter["flat"],
          f'hier inter-node payload {inter["hier"]} <= flat {inter["flat"]}')
else:
    print("      bench has no --dispatch yet: hier and flat not run")
print(f"netns_hosts: {passes} passed, {failures} failed")
sys.exit(1 if failures else 0)
PY
