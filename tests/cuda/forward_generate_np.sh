#!/usr/bin/env bash
# `generate --backend cuda` (greedy) at 1 and at 2 ranks on the emulated
# device: the same token ids (the device forward does not depend on how the
# experts are spread over ranks beyond BF16 noise, and greedy picks survive
# it at this prompt). Prints both.
#   forward_generate_np.sh EPSERVE MPIEXEC PRESET
set -euo pipefail
bin=$1 mpiexec=$2 preset=$3
export EP_EMU_DEVICES=${EP_EMU_DEVICES:-4}
ids() {
  "$mpiexec" -np "$1" --oversubscribe "$bin" generate --model "$preset" --tokens 3,1,4 \
    --max-tokens 3 --ignore-eos --backend cuda --json |
    sed -n 's/.*"ids":\[\([0-9,]*\)\].*/\1/p'
}
one=$(ids 1)
two=$(ids 2)
echo "$preset generate --backend cuda: np 1 [$one], np 2 [$two]"
if [ -z "$one" ] || [ "$one" != "$two" ]; then
  echo "forward_generate_np.sh: $preset: np 2 gave [$two], np 1 [$one]; expected the same ids" >&2
  exit 1
fi
