#!/usr/bin/env bash
# The first thing to run on a GPU machine (docs/cuda.md, "First run on a GPU
# machine"). One command, under a time budget (10 minutes on one H100,
# the build included):
#   1. configure and build with -DEP_CUDA=ON for the local GPU's architecture;
#   2. ctest -R cuda: every GPU test (a skip is listed as NOT RUN, with why);
#   3. bench --backend cuda --check on both tiny presets at np 1, and at np 2
#      when two GPUs are visible: 0 wrong rows, planned == measured bytes;
#   4. a short timing table, cpu vs cuda backend (tokens/s, phases per step),
#      with the device named;
#   5. the whole forward: `logits --backend cuda` against the cpu backend
#      (BF16 experts) on both tiny presets at np 1 (and np 2): the greedy
#      argmax equal at every position, the relative error against its
#      budget (scripts/logits_cmp.py); `generate --backend cuda` at np 1
#      and np 2 giving the same tokens (two GPUs needed, NOT RUN otherwise);
#   6. the floor table: `bench model --backend cuda --dtype bf16` prefill
#      and decode step times against the floor (weight bytes a step reads /
#      the device's measured bandwidth), and the host<->device bytes a step
#      copies, by class.
# Everything lands in one folder: gpu-check.log (all output), steps/ (one log
# per step), bench JSON, summary.txt and summary.json. Each step is PASS,
# FAIL or NOT RUN with a reason; the exit status is 1 when any step FAILed.
#
# --emulated builds the emulated device instead (-DEP_CUDA_EMU=ON, no GPU,
# no nvcc; EP_EMU_DEVICES=2), so the whole script can run on any machine;
# its timings are not performance numbers and the tables say so. --only
# picks groups of steps (scripts/emu.sh runs `--emulated --only
# forward,floor`, the parts its own steps do not cover).
set -uo pipefail

usage() {
    cat <<'EOF'
usage: scripts/gpu-check.sh [--out DIR] [--emulated] [--build DIR] [--budget S]
                            [--only LIST]
  --out DIR     where the logs, JSON and summary go (default out/gpu-check-<date>/
                under the repository, which git ignores)
  --emulated    build and run on the emulated device (-DEP_CUDA_EMU=ON,
                EP_EMU_DEVICES=2): checks the script and the CUDA code's logic
                without a GPU; its timings mean nothing
  --build DIR   build folder (default build-gpu/, or build-emu/ with --emulated)
  --budget S    seconds for everything (default 570 on a GPU, 1500 emulated);
                a step that no longer fits is NOT RUN
  --only LIST   the groups of steps to run, of tests (ctest -R cuda), check
                (bench --check), time (bench timing), forward (logits and
                generate, cuda vs cpu), floor (bench model against the
                bandwidth floor); default all. Without tests only epserve
                is built.
EOF
}

root=$(cd "$(dirname "$0")/.." && pwd)
emulated=0
out=""
build=""
budget=""
only=tests,check,time,forward,floor
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --emulated) emulated=1; shift ;;
    --build) build=${2:?--build needs a folder}; shift 2 ;;
    --budget) budget=${2:?--budget needs seconds}; shift 2 ;;
    --only) only=${2:?--only needs a list}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

for g in ${only//,/ }; do
    case "$g" in
    tests | check | time | forward | floor) ;;
    *) echo "gpu-check: --only: unknown group '$g' (expected tests, check, time, forward, floor)" >&2
       exit 2 ;;
    esac
done
want() { [[ ",$only," == *",$1,"* ]]; }

stamp=$(date +%Y%m%d-%H%M%S)
out=${out:-$root/out/gpu-check-$stamp}
mkdir -p "$out/steps" || exit 2
out=$(cd "$out" && pwd)
log=$out/gpu-check.log
: >"$log"
jobs=$(nproc 2>/dev/null || echo 4)
if [ $emulated = 1 ]; then
    mode=emulated
    build=${build:-$root/build-emu}
    budget=${budget:-1500}
    export EP_EMU_DEVICES=2
    # The emulated device is slow (every block's threads are real threads).
    check_args=(--tokens 32 --steps 2 --warmup 1)
    time_args=(--tokens 32 --steps 2 --warmup 1)
    time_presets=(tiny-qwen3-moe)
    floor_args=(--prefill 4 --decode "1,2" --context 4 --steps 1 --peak-size 64)
    gen_tokens=4
else
    mode=gpu
    build=${build:-$root/build-gpu}
    budget=${budget:-570}
    check_args=(--tokens 256 --steps 3 --warmup 1)
    time_args=(--tokens 256 --steps 5 --warmup 1)
    time_presets=(tiny-qwen3-moe tiny-deepseek-v2)
    floor_args=(--prefill "128,512" --decode "1,8,32" --context 64 --steps 8 --peak-size 512)
    gen_tokens=16
fi
check_presets=(tiny-qwen3-moe tiny-deepseek-v2)
# The whole-forward check: one sequence of these ids, every position's logits.
fwd_prompt=3,1,4,1,5,9,2,6,5,3,5,8,9,7,9,3
# Budget of `logits --backend cuda` against the cpu backend with BF16
# experts, row-wise max|a-b| / max|b| (LOGITS_REF_TOL_BF16 of app/logits.c,
# docs/cuda.md): the same BF16 weights, only the order of the sums differs.
fwd_budget=0.05
# tiny-deepseek-v2's group-limited routing (routed_scaling_factor 16) turns
# BF16-sized differences into another expert at near-ties: with the whole
# forward on the device this prompt's worst row moved 5.4 % (argmax equal
# at 16/16), as the CPU's own fp32 and BF16 runs differ by up to 44 % at a
# position of a 20-token prompt (docs/cuda.md, "The device forward").
fwd_budget_deepseek=0.08
py=$(command -v python3 || true)
reserve=15 # seconds kept for the summary

say() { echo "$*" | tee -a "$log"; }

# ---- step bookkeeping --------------------------------------------------------
step_names=()
step_status=()
step_reason=()
step_secs=()
n_fail=0
n_notrun=0
n_pass=0

# record NAME STATUS REASON SECONDS
record() {
    step_names+=("$1")
    step_status+=("$2")
    step_reason+=("$3")
    step_secs+=("$4")
    case "$2" in
    PASS) n_pass=$((n_pass + 1)) ;;
    FAIL) n_fail=$((n_fail + 1)) ;;
    *) n_notrun=$((n_notrun + 1)) ;;
    esac
    local r=""
    [ -n "$3" ] && r=" - $3"
    say "$(printf '[%4ds] %-7s %s (%ss)%s' "$SECONDS" "$2" "$1" "$4" "$r")"
}

# Seconds a step may take: its own cap, or what is left of the budget.
step_limit() {
    local left=$((budget - reserve - SECONDS))
    [ "$1" -lt "$left" ] && left=$1
    echo "$left"
}

# run NAME CAP_S CMD...: runs CMD under a timeout, output to steps/NAME.log
# and the full log. Sets run_rc, run_secs, run_why, run_out (the step log).
# run_rc -1: not started (no time left).
run() {
    local name=$1 cap=$2
    shift 2
    run_out=$out/steps/$name.log
    local lim
    lim=$(step_limit "$cap")
    run_secs=0
    if [ "$lim" -lt 5 ]; then
        run_rc=-1
        run_why="the ${budget}s budget is spent"
        return
    fi
    say "# $name: $* (limit ${lim}s)"
    local t0=$SECONDS
    timeout --kill-after=10 "$lim" "$@" >"$run_out" 2>&1
    run_rc=$?
    run_secs=$((SECONDS - t0))
    cat "$run_out" >>"$log"
    run_why=""
    if [ $run_rc = 124 ] || [ $run_rc = 137 ]; then
        run_why="timed out after ${lim}s"
    elif [ $run_rc != 0 ]; then
        run_why="exit status $run_rc, see steps/$name.log"
    fi
    if [ $run_rc != 0 ]; then
        tail -n 15 "$run_out" | sed 's/^/    | /'
    fi
}

# ---- bench JSON (jansson's indented output: one key per line) ---------------
# One line per policy: name tokens_per_s step_ms_p50 wrong planned measured
# route dispatch experts combine shared
bench_rows() {
    awk '
    /"policies": \[/ { inpol = 1 }
    !inpol { next }
    function val(s) { sub(/^[^:]*: */, "", s); sub(/,? *$/, "", s); gsub(/"/, "", s); return s }
    /^      "name":/ { if (name != "") emit(); name = val($0); delete v; next }
    /"phase_ms_per_step": \{/ { inph = 1; next }
    inph && /\}/ { inph = 0; next }
    inph { k = $1; gsub(/[":]/, "", k); v["ph_" k] = val($0); next }
    /^      "(tokens_per_s|step_ms_p50|wrong|planned_bytes|measured_bytes)":/ {
        k = $1; gsub(/[":]/, "", k); v[k] = val($0); next }
    function get(k) { return (k in v) ? v[k] : "-" }
    function emit() {
        print name, get("tokens_per_s"), get("step_ms_p50"), get("wrong"),
              get("planned_bytes"), get("measured_bytes"), get("ph_route"),
              get("ph_dispatch"), get("ph_experts"), get("ph_combine"), get("ph_shared")
    }
    END { if (name != "") emit() }
    ' "$1"
}

json_str() { # a JSON string literal of $1
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\t'/ }
    s=${s//$'\r'/ }
    s=${s//$'\n'/ }
    printf '"%s"' "$s"
}

# ---- environment -------------------------------------------------------------
say "# epserve gpu-check ($mode) $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "# repository: $root ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(
    git -C "$root" diff --quiet HEAD 2>/dev/null || echo ', uncommitted changes'))"
say "# build: $build  out: $out  budget: ${budget}s  cores: $jobs  steps: $only"

mpi=(mpirun)
if ! command -v mpirun >/dev/null; then
    mpi=()
elif mpirun --version 2>&1 | grep -q 'Open MPI'; then
    mpi+=(--oversubscribe)
    if [ "$(id -u)" = 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
fi

device="unknown"
n_gpus=0
if [ $mode = emulated ]; then
    n_gpus=$EP_EMU_DEVICES
    device="emulated (tests/emu)"
    record "devices" PASS "$n_gpus emulated devices (EP_EMU_DEVICES)" 0
elif ! command -v nvidia-smi >/dev/null; then
    record "devices" FAIL "nvidia-smi not found: is this a GPU machine? (--emulated runs without one)" 0
else
    smi=$(nvidia-smi -L 2>&1)
    echo "$smi" >>"$log"
    n_gpus=$(echo "$smi" | grep -c '^GPU ')
    if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
        vis=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
        [ "$vis" -lt "$n_gpus" ] && n_gpus=$vis
    fi
    device=$(echo "$smi" | sed -n 's/^GPU 0: \(.*\) (UUID.*/\1/p')
    device=${device:-unknown}
    if [ "$n_gpus" -ge 1 ]; then
        drv=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)
        record "devices" PASS "$n_gpus visible, GPU 0: $device, driver ${drv:-?}" 0
    else
        record "devices" FAIL "nvidia-smi lists no GPU: $(echo "$smi" | head -n 1)" 0
    fi
fi

# ---- 1. configure and build --------------------------------------------------
cfg=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DEP_CUDA=ON)
if [ $mode = emulated ]; then
    cfg+=(-DEP_CUDA_EMU=ON)
else
    # CMAKE_CUDA_ARCHITECTURES=native needs CMake 3.24; older ones get the
    # compute capabilities nvidia-smi reports ("9.0" -> 90).
    cmv=$(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    read -r cma cmi <<<"${cmv:-0 0}"
    if [ "$cma" -gt 3 ] || { [ "$cma" = 3 ] && [ "$cmi" -ge 24 ]; }; then
        cfg+=(-DCMAKE_CUDA_ARCHITECTURES=native)
    else
        archs=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null |
            tr -d ' .' | grep -E '^[0-9]+$' | sort -u | paste -sd ';')
        [ -n "$archs" ] && cfg+=("-DCMAKE_CUDA_ARCHITECTURES=$archs")
    fi
fi
built=0
run configure 120 cmake -S "$root" -B "$build" "${cfg[@]}"
if [ $run_rc = 0 ]; then
    record configure PASS "${cfg[*]}" "$run_secs"
    targets=()
    want tests || targets=(--target epserve) # the tests' binaries only for ctest
    run build 420 cmake --build "$build" -j "$jobs" "${targets[@]}"
    if [ $run_rc = 0 ]; then
        built=1
        record build PASS "-j $jobs" "$run_secs"
    elif [ $run_rc = -1 ]; then
        record build "NOT RUN" "$run_why" 0
    else
        record build FAIL "$run_why" "$run_secs"
    fi
elif [ $run_rc = -1 ]; then
    record configure "NOT RUN" "$run_why" 0
else
    record configure FAIL "$run_why" "$run_secs"
fi

# ---- 2. the GPU tests --------------------------------------------------------
if ! want tests; then
    :
elif [ $built = 0 ]; then
    record "ctest -R cuda" "NOT RUN" "no build" 0
else
    run ctest 240 ctest --test-dir "$build" -R cuda -V -j "$jobs"
    ct=$run_out
    if [ $run_rc = -1 ]; then
        record "ctest -R cuda" "NOT RUN" "$run_why" 0
    else
        # "12/14 Test #97: cuda.test_mpi_nccl.np2 ......   Passed    1.99 sec"
        results=$(sed -n 's/^ *[0-9]*\/[0-9]* Test *#\([0-9]*\): \(cuda\.[^ ]*\) \.*[ *]*\([A-Za-z][A-Za-z ]*[A-Za-z]\) *\(.*\)$/\1|\2|\3|\4/p' "$ct")
        n_tests=$(printf '%s' "$results" | grep -c .)
        if [ "$n_tests" = 0 ]; then
            if [ -n "$run_why" ]; then
                record "ctest -R cuda" FAIL "$run_why, before any cuda test finished" "$run_secs"
            else
                record "ctest -R cuda" FAIL "no cuda test found in $build" "$run_secs"
            fi
        else
            while IFS='|' read -r num tname res rest; do
                secs=$(echo "$rest" | sed -n 's/^\([0-9.]*\) sec.*/\1/p')
                case "$res" in
                Passed) record "$tname" PASS "" "${secs:-?}" ;;
                Skipped)
                    why=$(sed -n "s/^$num: # SKIP \(.*\)/\1/p" "$ct" | head -n 1)
                    record "$tname" "NOT RUN" "skipped: ${why:-no reason printed}" "${secs:-?}" ;;
                *) record "$tname" FAIL "$res $rest" "${secs:-?}" ;;
                esac
            done <<<"$results"
            if [ $run_rc = 124 ] || [ $run_rc = 137 ]; then
                record "ctest -R cuda" FAIL "$run_why ($n_tests tests finished)" "$run_secs"
            fi
            dline=$(sed -n 's/^[0-9]*: # device 0: \(.*\)/\1/p' "$ct" | head -n 1)
            [ -n "$dline" ] && say "# epserve's test_cuda_experts sees device 0: $dline"
            [ $mode = emulated ] && [ -n "$dline" ] && device="$dline (emulated)"
        fi
    fi
fi

# ---- 3. bench --check --------------------------------------------------------
epserve=$build/epserve
nps=(1 2)
for np in "${nps[@]}"; do
    want check || break
    for preset in "${check_presets[@]}"; do
        name="check-$preset-np$np"
        if [ $built = 0 ]; then
            record "$name" "NOT RUN" "no build" 0; continue
        elif [ ${#mpi[@]} = 0 ]; then
            record "$name" "NOT RUN" "mpirun not found" 0; continue
        elif [ "$n_gpus" -lt "$np" ]; then
            record "$name" "NOT RUN" "needs $np GPUs, $n_gpus visible" 0; continue
        fi
        json=$out/$name.json
        rm -f "$json"
        run "$name" 180 "${mpi[@]}" -np "$np" "$epserve" bench --model "$preset" --backend cuda \
            --routing baseline,ban "${check_args[@]}" --check --json "$json" --quiet
        if [ $run_rc = -1 ]; then
            record "$name" "NOT RUN" "$run_why" 0; continue
        elif [ $run_rc != 0 ]; then
            record "$name" FAIL "$run_why" "$run_secs"; continue
        elif [ ! -s "$json" ]; then
            record "$name" FAIL "no JSON written" "$run_secs"; continue
        fi
        bad=""
        grep -q '"backend": "cuda"' "$json" || bad="JSON backend is not cuda; "
        rows=$(bench_rows "$json")
        [ -z "$rows" ] && bad+="no policy rows; "
        while read -r pol tps p50 wrong planned measured _; do
            [ -z "$pol" ] && continue
            [ "$wrong" = 0 ] || bad+="$pol: $wrong wrong rows; "
            [ "$planned" = "$measured" ] || bad+="$pol: planned $planned != measured $measured bytes; "
        done <<<"$rows"
        if [ -z "$bad" ]; then
            record "$name" PASS "0 wrong rows, planned == measured bytes ($(echo "$rows" | awk '{printf "%s%s", s, $1; s=","}'))" "$run_secs"
        else
            record "$name" FAIL "${bad%; }" "$run_secs"
        fi
    done
done

# ---- 4. timing ---------------------------------------------------------------
timing=() # "preset np backend tokens/s p50 route dispatch experts combine shared"
for np in "${nps[@]}"; do
    want time || break
    for preset in "${time_presets[@]}"; do
        for backend in cpu cuda; do
            name="time-$preset-np$np-$backend"
            if [ $built = 0 ]; then
                record "$name" "NOT RUN" "no build" 0; continue
            elif [ ${#mpi[@]} = 0 ]; then
                record "$name" "NOT RUN" "mpirun not found" 0; continue
            elif [ "$n_gpus" -lt "$np" ]; then
                record "$name" "NOT RUN" "needs $np GPUs, $n_gpus visible" 0; continue
            fi
            json=$out/$name.json
            rm -f "$json"
            run "$name" 120 "${mpi[@]}" -np "$np" "$epserve" bench --model "$preset" \
                --backend "$backend" --routing baseline "${time_args[@]}" --json "$json" --quiet
            if [ $run_rc = -1 ]; then
                record "$name" "NOT RUN" "$run_why" 0; continue
            elif [ $run_rc != 0 ]; then
                record "$name" FAIL "$run_why" "$run_secs"; continue
            fi
            row=$(bench_rows "$json" 2>/dev/null | head -n 1)
            if [ -z "$row" ]; then
                record "$name" FAIL "no policy row in the JSON" "$run_secs"; continue
            fi
            read -r _ tps p50 _ _ _ route disp exp comb shr <<<"$row"
            if ! [[ "$tps $p50 $route $disp $exp $comb $shr" =~ ^[0-9.eE+\ -]+$ ]] ||
                [[ " $tps $p50 $route $disp $exp $comb $shr " == *" - "* ]]; then
                record "$name" FAIL "tokens/s or a phase missing from the JSON" "$run_secs"; continue
            fi
            timing+=("$preset $np $backend $tps $p50 $route $disp $exp $comb $shr")
            record "$name" PASS "" "$run_secs"
        done
    done
done

# gate NAME NP [py]: 0 when step NAME can run at NP ranks (with python3 when
# asked); otherwise records it NOT RUN with why, and returns 1.
gate() {
    if [ $built = 0 ]; then
        record "$1" "NOT RUN" "no build" 0
    elif [ ${#mpi[@]} = 0 ]; then
        record "$1" "NOT RUN" "mpirun not found" 0
    elif [ "$n_gpus" -lt "$2" ]; then
        record "$1" "NOT RUN" "needs $2 GPUs, $n_gpus visible" 0
    elif [ "${3:-}" = py ] && [ -z "$py" ]; then
        record "$1" "NOT RUN" "python3 not found (it compares the logits and reads the JSON)" 0
    else
        return 0
    fi
    return 1
}

# ---- 5. the whole forward: cuda against cpu -----------------------------------
n_fwd=$(echo "$fwd_prompt" | tr ',' '\n' | grep -c .)
for preset in "${check_presets[@]}"; do
    want forward || break
    # The reference: the cpu backend with BF16 experts, one rank.
    ref=$out/logits-$preset-cpu-bf16.bin
    rm -f "$ref"
    for np in "${nps[@]}"; do
        name="forward-$preset-np$np"
        gate "$name" "$np" py || continue
        if [ ! -s "$ref" ]; then
            run "$name-cpu" 120 "${mpi[@]}" -np 1 "$epserve" logits --model "$preset" \
                --tokens "$fwd_prompt" --expert-dtype bf16 --out "$ref"
            if [ $run_rc = -1 ]; then
                record "$name" "NOT RUN" "$run_why" 0; continue
            elif [ $run_rc != 0 ]; then
                record "$name" FAIL "the cpu reference: $run_why" "$run_secs"; continue
            fi
        fi
        got=$out/logits-$preset-np$np-cuda.bin
        rm -f "$got"
        run "$name" 180 "${mpi[@]}" -np "$np" "$epserve" logits --model "$preset" \
            --tokens "$fwd_prompt" --backend cuda --out "$got"
        if [ $run_rc = -1 ]; then
            record "$name" "NOT RUN" "$run_why" 0; continue
        elif [ $run_rc != 0 ]; then
            record "$name" FAIL "$run_why" "$run_secs"; continue
        fi
        secs=$run_secs
        run "$name-cmp" 60 "$py" "$root/scripts/logits_cmp.py" "$got" "$ref" "$n_fwd" \
            "$([ "$preset" = tiny-deepseek-v2 ] && echo "$fwd_budget_deepseek" || echo "$fwd_budget")" \
            "cuda np $np vs cpu-bf16, $n_fwd positions"
        line=$(tail -n 1 "$run_out")
        if [ $run_rc = 0 ]; then
            record "$name" PASS "$line" "$((secs + run_secs))"
        else
            record "$name" FAIL "${line:-$run_why}" "$((secs + run_secs))"
        fi
    done
done

# generate --backend cuda: the same greedy tokens at np 1 and np 2.
for preset in "${check_presets[@]}"; do
    want forward || break
    name="generate-$preset-np1-vs-np2"
    gate "$name" 2 || continue
    declare -A gen_ids=()
    secs=0
    bad=""
    for np in 1 2; do
        run "$name-np$np" 180 "${mpi[@]}" -np "$np" "$epserve" generate --model "$preset" \
            --tokens "$fwd_prompt" --max-tokens "$gen_tokens" --ignore-eos --backend cuda --json
        secs=$((secs + run_secs))
        if [ $run_rc != 0 ]; then
            bad=${run_why:-not run}; break
        fi
        gen_ids[$np]=$(sed -n 's/.*"ids":\[\([^]]*\)\].*/\1/p' "$run_out" | head -n 1)
        [ -n "${gen_ids[$np]}" ] || { bad="np $np: no \"ids\" in its JSON (steps/$name-np$np.log)"; break; }
    done
    if [ -n "$bad" ]; then
        record "$name" FAIL "$bad" "$secs"
    elif [ "${gen_ids[1]}" = "${gen_ids[2]}" ]; then
        record "$name" PASS "the same $gen_tokens tokens ($(echo "${gen_ids[1]}" | cut -d, -f1-4),...)" "$secs"
    else
        record "$name" FAIL "np 1 gave ${gen_ids[1]}, np 2 gave ${gen_ids[2]}" "$secs"
    fi
    unset gen_ids
done

# ---- 6. the floor: bench model against the device's bandwidth ----------------
# One line per row of a bench model JSON: mode tokens step_ms floor_ms x_floor
# MB/step act_h2d act_d2h meta_h2d meta_d2h (KB per step) bandwidth_GB/s.
floor_rows() {
    "$py" - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
gbs = d["device"]["bandwidth_gbs"]
for r in d["rows"]:
    c = r["copy_bytes_per_step"]
    print(r["mode"], r["tokens_per_step"], r["step_ms"], r["floor_ms"], r["x_floor"],
          r["bytes_per_step"] / 1e6, c["act"]["h2d"] / 1e3, c["act"]["d2h"] / 1e3,
          c["meta"]["h2d"] / 1e3, c["meta"]["d2h"] / 1e3, gbs)
PY
}
floor=() # "preset np mode tokens step_ms floor_ms x_floor MB act_h2d act_d2h meta_h2d meta_d2h GB/s"
for preset in "${time_presets[@]}"; do
    want floor || break
    name="floor-$preset-np1"
    gate "$name" 1 py || continue
    json=$out/$name.json
    rm -f "$json"
    run "$name" 180 "${mpi[@]}" -np 1 "$epserve" bench model --model "$preset" --backend cuda \
        --dtype bf16 --routing baseline "${floor_args[@]}" --json "$json" --quiet
    if [ $run_rc = -1 ]; then
        record "$name" "NOT RUN" "$run_why" 0; continue
    elif [ $run_rc != 0 ]; then
        record "$name" FAIL "$run_why" "$run_secs"; continue
    fi
    rows=$(floor_rows "$json" 2>>"$log")
    if [ -z "$rows" ]; then
        record "$name" FAIL "no row with floor_ms and copy_bytes_per_step in the JSON" "$run_secs"
        continue
    fi
    while read -r r; do
        floor+=("$preset 1 $r")
    done <<<"$rows"
    record "$name" PASS "$(echo "$rows" | wc -l) rows" "$run_secs"
done

# ---- summary -----------------------------------------------------------------
elapsed=$SECONDS
if [ $n_fail -gt 0 ]; then
    verdict="FAILED: $n_fail failed, $n_pass passed, $n_notrun not run"
elif [ $n_notrun -gt 0 ]; then
    verdict="PASSED with gaps: $n_pass passed, $n_notrun not run (listed above), 0 failed"
else
    verdict="PASSED: all $n_pass steps passed"
fi
{
    echo "# epserve gpu-check summary ($mode), $(date -u +%Y-%m-%dT%H:%M:%SZ), ${elapsed}s of ${budget}s"
    echo "# device: $device; GPUs visible: $n_gpus"
    echo "#"
    printf '%-8s %-40s %7s  %s\n' "# status" "step" "seconds" "reason"
    for i in "${!step_names[@]}"; do
        printf '%-8s %-40s %7s  %s\n' "${step_status[$i]}" "${step_names[$i]}" "${step_secs[$i]}" "${step_reason[$i]}"
    done
    if want time; then
        echo "#"
        echo "# timing: bench --routing baseline ${time_args[*]}; phases in ms per step"
        if [ $mode = emulated ]; then
            echo "# emulated: not a performance number (the cuda rows ran on the emulated device)"
        fi
        printf '%-18s %3s %-7s %12s %10s %9s %9s %10s %9s %9s\n' "# model" np backend tokens/s \
            p50_ms route dispatch experts combine shared
        if [ ${#timing[@]} = 0 ]; then
            echo "# (no timing row: see the time-* steps)"
        fi
        for r in "${timing[@]}"; do
            # shellcheck disable=SC2086
            printf '%-18s %3s %-7s %12.1f %10.3f %9.3f %9.3f %10.3f %9.3f %9.3f\n' $r
        done
    fi
    if want floor; then
        echo "#"
        echo "# floor: bench model --backend cuda --dtype bf16 --routing baseline ${floor_args[*]}"
        echo "#   floor = weight MB a step reads / the device's bandwidth (GB/s: device-to-device"
        echo "#   copies, best of 5); x = step / floor; copies: KB per step host->device (h2d) and"
        echo "#   device->host (d2h), act = activations, meta = ids, positions, routes, counts"
        if [ $mode = emulated ]; then
            echo "# emulated: not a performance number (host memory, host time)"
        fi
        printf '%-18s %3s %-7s %6s %10s %10s %8s %8s %9s %9s %9s %9s %8s\n' "# model" np mode \
            tokens step_ms floor_ms x MB/step act_h2d act_d2h meta_h2d meta_d2h GB/s
        if [ ${#floor[@]} = 0 ]; then
            echo "# (no floor row: see the floor-* steps)"
        fi
        for r in "${floor[@]}"; do
            # shellcheck disable=SC2086
            printf '%-18s %3s %-7s %6s %10.3f %10.4f %8.1f %8.2f %9.1f %9.1f %9.2f %9.2f %8.1f\n' $r
        done
    fi
    echo "#"
    echo "$verdict"
} >"$out/summary.txt"

{
    echo "{"
    echo "  \"mode\": $(json_str "$mode"),"
    echo "  \"emulated\": $([ $mode = emulated ] && echo true || echo false),"
    echo "  \"date\": $(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),"
    echo "  \"commit\": $(json_str "$(git -C "$root" rev-parse HEAD 2>/dev/null)"),"
    echo "  \"device\": $(json_str "$device"),"
    echo "  \"gpus\": $n_gpus,"
    echo "  \"build\": $(json_str "$build"),"
    echo "  \"budget_s\": $budget,"
    echo "  \"elapsed_s\": $elapsed,"
    echo "  \"passed\": $n_pass,"
    echo "  \"failed\": $n_fail,"
    echo "  \"not_run\": $n_notrun,"
    echo "  \"verdict\": $(json_str "$verdict"),"
    echo "  \"steps\": ["
    for i in "${!step_names[@]}"; do
        sep=","
        [ "$i" = $((${#step_names[@]} - 1)) ] && sep=""
        secs=${step_secs[$i]}
        [[ $secs =~ ^[0-9.]+$ ]] || secs=null
        echo "    {\"name\": $(json_str "${step_names[$i]}"), \"status\": $(json_str "${step_status[$i]}"), \"seconds\": $secs, \"reason\": $(json_str "${step_reason[$i]}")}$sep"
    done
    echo "  ],"
    echo "  \"timing_args\": $(json_str "--routing baseline ${time_args[*]}"),"
    echo "  \"timing\": ["
    for i in "${!timing[@]}"; do
        sep=","
        [ "$i" = $((${#timing[@]} - 1)) ] && sep=""
        read -r p np be tps p50 route disp exp comb shr <<<"${timing[$i]}"
        echo "    {\"model\": $(json_str "$p"), \"np\": $np, \"backend\": $(json_str "$be"), \"tokens_per_s\": $tps, \"step_ms_p50\": $p50, \"phase_ms_per_step\": {\"route\": $route, \"dispatch\": $disp, \"experts\": $exp, \"combine\": $comb, \"shared\": $shr}}$sep"
    done
    echo "  ],"
    echo "  \"floor_args\": $(json_str "--backend cuda --dtype bf16 --routing baseline ${floor_args[*]}"),"
    echo "  \"floor\": ["
    for i in "${!floor[@]}"; do
        sep=","
        [ "$i" = $((${#floor[@]} - 1)) ] && sep=""
        read -r p np md tk ms fms xf mb ah ad mh mdd gbs <<<"${floor[$i]}"
        echo "    {\"model\": $(json_str "$p"), \"np\": $np, \"mode\": $(json_str "$md"), \"tokens\": $tk, \"step_ms\": $ms, \"floor_ms\": $fms, \"x_floor\": $xf, \"weight_mb_per_step\": $mb, \"bandwidth_gbs\": $gbs, \"copy_kb_per_step\": {\"act_h2d\": $ah, \"act_d2h\": $ad, \"meta_h2d\": $mh, \"meta_d2h\": $mdd}}$sep"
    done
    echo "  ]"
    echo "}"
} >"$out/summary.json"

say ""
tee -a "$log" <"$out/summary.txt"
say "# written: $out/{summary.txt,summary.json,gpu-check.log,steps/,*.json}"
[ $n_fail = 0 ]
