#!/usr/bin/env bash
# Real "hosts" on one machine: N network + UTS namespaces with host names
# ephost0..ephost{N-1}, each with one veth (eth0, 10.77.0.(i+1)/24) into a
# bridge that lives in a namespace of its own, and one `mpirun` across them
# over TCP only. mpirun runs inside ephost0; it starts its daemon (orted) on
# every other host through a launch agent that enters that host's namespaces
# (ip netns exec + unshare --uts + hostname), as ssh would on a cluster. So
# MPI_Get_processor_name sees the namespace's host name and epserve numbers
# the nodes from it (do not pass --ranks-per-node).
#
#   scripts/netns-hosts.sh [--hosts N] [--slots S] [--stats FILE] [--] MPIRUN_ARGS...
#
#   --hosts N     hosts (default 2)
#   --slots S     ranks per host (default 2); the run has N*S ranks, by slot:
#                 ranks 0..S-1 on ephost0, S..2S-1 on ephost1, ...
#   --stats FILE  after the run, write what each host's eth0 counted during
#                 it, one line per host: "host rx_bytes tx_bytes rx_packets
#                 tx_packets" (deltas over the mpirun)
#   MPIRUN_ARGS   the program and its arguments, optionally preceded by more
#                 mpirun options (e.g. -x VAR); relative paths are from here
#
# Between hosts only TCP on the veth subnet (--mca btl tcp,self, btl and oob
# restricted to 10.77.0.0/24); ranks on one host talk TCP over loopback, which
# the veth counters do not see. Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN),
# `ip`, `unshare`; exits 77 with the reason when namespaces cannot be made.
# Everything it makes (namespaces, veths, the bridge, /etc/netns/<ns>, a temp
# dir) goes on every exit path; namespaces left by a killed run (their
# creator's pid is in the name and no longer alive) go at start.
set -euo pipefail

hosts=2
slots=2
stats=
while [ $# -gt 0 ]; do
  case $1 in
    --hosts) hosts=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    --stats) stats=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
case $hosts$slots in *[!0-9]*|'') echo "netns-hosts.sh: --hosts and --slots: expected integers, found '$hosts' and '$slots'" >&2; exit 2 ;; esac
if [ "$hosts" -lt 1 ] || [ "$hosts" -gt 200 ] || [ "$slots" -lt 1 ]; then
  echo "netns-hosts.sh: expected 1 <= --hosts <= 200 and --slots >= 1, found $hosts and $slots" >&2
  exit 2
fi
[ $# -gt 0 ] || { echo "netns-hosts.sh: no program to run (see --help)" >&2; exit 2; }

skip() { echo "netns-hosts.sh: SKIP: $*" >&2; exit 77; }
command -v ip >/dev/null || skip "no 'ip' command (iproute2)"
command -v unshare >/dev/null || skip "no 'unshare' command (util-linux)"
command -v mpirun >/dev/null || skip "no mpirun"

# Namespaces are named epn<pid>h<i> (hosts) and epn<pid>sw (the bridge).
prefix=epn$$
ns_of() { echo "${prefix}h$1"; }
sw=${prefix}sw
subnet=10.77.0
tmp=

remove_ns() { # kills what still runs inside namespace $1, then deletes it
  local ns=$1 pids
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "/etc/netns/$ns"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -z "${mpirun_pid:-}" ] || kill -TERM "$mpirun_pid" 2>/dev/null || true
  for ((i = 0; i < hosts; i++)); do remove_ns "$(ns_of "$i")"; done
  remove_ns "$sw"
  rmdir /etc/netns 2>/dev/null || true
  [ -z "$tmp" ] || rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Leftovers of a killed run: a creator pid that is no longer alive.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
  if [[ $ns =~ ^epn([0-9]+)(h[0-9]+|sw)$ ]] && ! kill -0 "${BASH_REMATCH[1]}" 2>/dev/null; then
    echo "netns-hosts.sh: removing $ns, left by a killed run" >&2
    remove_ns "$ns"
  fi
done
for d in /tmp/netns-hosts.*; do
  if [[ $d =~ ^/tmp/netns-hosts\.([0-9]+)\. ]] && ! kill -0 "${BASH_REMATCH[1]}" 2>/dev/null; then
    rm -rf "$d"
  fi
done

ip netns add "$sw" 2>/dev/null || skip "cannot create a network namespace (ip netns add: needs root or CAP_NET_ADMIN)"
ip netns exec "$sw" true 2>/dev/null || skip "cannot enter a network namespace (ip netns exec: needs CAP_SYS_ADMIN to mount /sys)"
unshare --uts true 2>/dev/null || skip "cannot create a UTS namespace (unshare --uts: needs CAP_SYS_ADMIN)"
mkdir -p "/etc/netns/$sw" 2>/dev/null || skip "cannot write /etc/netns (the host names' /etc/hosts for ip netns exec)"
tmp=$(mktemp -d "/tmp/netns-hosts.$$.XXXXXX")

# No IPv6: its autoconfiguration would put packets on the veths.
ip netns exec "$sw" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$sw" link add br0 type bridge
ip -n "$sw" link set br0 up
hostfile=$tmp/hostfile
: >"$hostfile"
hosts_lines="127.0.0.1 localhost"
for ((i = 0; i < hosts; i++)); do
  hosts_lines+=$'\n'"$subnet.$((i + 1)) ephost$i"
  echo "ephost$i slots=$slots" >>"$hostfile"
done
for ((i = 0; i < hosts; i++)); do
  ns=$(ns_of "$i")
  ip netns add "$ns"
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  # eth0 inside the host, p<i> on the bridge.
  ip -n "$ns" link add eth0 type veth peer name "p$i" netns "$sw"
  ip -n "$sw" link set "p$i" master br0 up
  ip -n "$ns" addr add "$subnet.$((i + 1))/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  # ip netns exec bind-mounts /etc/netns/<ns>/hosts over /etc/hosts: the
  # host names resolve inside the namespaces only.
  mkdir -p "/etc/netns/$ns"
  printf '%s\n' "$hosts_lines" >"/etc/netns/$ns/hosts"
done

# The launch agent: mpirun calls it as `agent HOST COMMAND...` (like ssh,
# the words are joined and run by a shell) to start orted on HOST.
agent=$tmp/ns-agent
{
  echo '#!/bin/sh'
  echo 'while [ "${1#-}" != "$1" ]; do shift; done # options meant for ssh'
  echo 'host=$1; shift'
  echo 'case $host in'
  for ((i = 0; i < hosts; i++)); do echo "  ephost$i) ns=$(ns_of "$i") ;;"; done
  echo '  *) echo "ns-agent: unknown host $host" >&2; exit 255 ;;'
  echo 'esac'
  echo 'exec ip netns exec "$ns" unshare --uts sh -c '"'"'hostname "$0" && exec sh -c "$1"'"'"' "$host" "$*"'
} >"$agent"
chmod +x "$agent"

counters() { # host rx_bytes tx_bytes rx_packets tx_packets, one line per host
  for ((i = 0; i < hosts; i++)); do
    printf 'ephost%d' "$i"
    for c in rx_bytes tx_bytes rx_packets tx_packets; do
      printf ' %s' "$(ip netns exec "$(ns_of "$i")" cat "/sys/class/net/eth0/statistics/$c")"
    done
    printf '\n'
  done
}
counters >"$tmp/before"

if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# mpirun in ephost0's namespaces; binding off and waiting ranks yield the
# core: every "host" shares this machine's cores, which Open MPI cannot see
# (each host's slots look free), and a rank spinning in MPI_Wait would
# otherwise hold a core its peer needs to answer (docs/scale.md §6).
set +e
ip netns exec "$(ns_of 0)" unshare --uts sh -c 'hostname ephost0 && exec "$@"' sh \
  mpirun -np $((hosts * slots)) --hostfile "$hostfile" --bind-to none \
  --mca mpi_yield_when_idle 1 \
  --mca plm_rsh_agent "$agent" \
  --mca btl tcp,self --mca btl_tcp_if_include "$subnet.0/24" \
  --mca oob_tcp_if_include "$subnet.0/24" \
  "$@" &
mpirun_pid=$!
wait "$mpirun_pid"
rc=$?
mpirun_pid=
set -e

if [ -n "$stats" ]; then
  counters >"$tmp/after"
  awk 'NR == FNR { for (i = 2; i <= 5; i++) b[$1, i] = $i; next }
       { printf "%s", $1; for (i = 2; i <= 5; i++) printf " %d", $i - b[$1, i]; printf "\n" }' \
    "$tmp/before" "$tmp/after" >"$stats"
fi
exit "$rc"
