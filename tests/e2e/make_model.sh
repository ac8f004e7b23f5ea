#!/usr/bin/env bash
# End to end: what `epserve make-model` writes beside the weights, for both
# tiny presets in BF16 (default) and F32: config.json's torch_dtype is the
# dtype of every tensor in the safetensors shards (F32 -> float32, BF16 ->
# bfloat16) and its bos / eos ids are the tokenizer.json ids of the family's
# tokens; generation_config.json and tokenizer_config.json name tokens that
# tokenizer.json has, at the same ids; and epserve loads the directory:
# `generate` takes the file's sampling defaults (temperature, top_k, top_p),
# `tokenize` finds the special tokens, a DeepSeek checkpoint ends on its
# eos_token_id.
set -uo pipefail
bin=$1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
check() { # check <0|1> <message>
  if [[ $1 == 1 ]]; then echo "ok    $2"; else echo "FAIL  $2"; failures=$((failures + 1)); fi
}

for preset in tiny-qwen3-moe tiny-deepseek-v2; do
  for dtype in bf16 f32; do
    ck="$tmp/$preset-$dtype"
    "$bin" make-model --preset $preset --dtype $dtype --out "$ck" > "$tmp/mm.log" || cat "$tmp/mm.log"
    msg=$(python3 - "$ck" "$preset" "$dtype" << 'PY'
import json, os, sys
ck, preset, dtype = sys.argv[1:]
cfg = json.load(open(os.path.join(ck, "config.json")))
gen = json.load(open(os.path.join(ck, "generation_config.json")))
tc = json.load(open(os.path.join(ck, "tokenizer_config.json")))
tok = json.load(open(os.path.join(ck, "tokenizer.json")))
added = {t["content"]: t["id"] for t in tok["added_tokens"]}
problems = []
def need(ok, what):
    if not ok:
        problems.append(what)

# torch_dtype is what the shards hold.
want = {"bf16": ("bfloat16", "BF16"), "f32": ("float32", "F32")}[dtype]
need(cfg["torch_dtype"] == want[0], f"torch_dtype {cfg['torch_dtype']!r}, expected {want[0]!r}")
index = json.load(open(os.path.join(ck, "model.safetensors.index.json")))
dtypes = set()
for shard in sorted(set(index["weight_map"].values())):
    with open(os.path.join(ck, shard), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h = json.loads(f.read(n))
    dtypes |= {v["dtype"] for k, v in h.items() if k != "__metadata__"}
need(dtypes == {want[1]}, f"shard dtypes {sorted(dtypes)}, expected [{want[1]}]")

# Special token ids as the published configs have them.
if preset.startswith("tiny-qwen3"):
    bos, eos = added["<|endoftext|>"], added["<|im_end|>"]
    need(gen["eos_token_id"] == [eos, bos], f"generation eos {gen['eos_token_id']}")
    need(gen["pad_token_id"] == bos and gen["top_k"] == 20 and gen["temperature"] == 0.6,
         f"generation_config {gen}")
    need(tc["bos_token"] is None and tc["eos_token"] == "<|im_end|>", "tokenizer_config tokens")
else:
    bos = added["<\uff5cbegin\u2581of\u2581sentence\uff5c>"]
    eos = added["<\uff5cend\u2581of\u2581sentence\uff5c>"]
    need(gen["eos_token_id"] == eos and gen["temperature"] == 0.3, f"generation_config {gen}")
    need(added.get(tc["bos_token"]) == bos and added.get(tc["eos_token"]) == eos,
         "tokenizer_config bos / eos")
need(cfg["bos_token_id"] == bos and cfg["eos_token_id"] == eos,
     f"config.json bos/eos {cfg.get('bos_token_id')}/{cfg.get('eos_token_id')}, tokenizer {bos}/{eos}")
need(gen["bos_token_id"] == bos and gen["do_sample"] is True and gen["top_p"] == 0.95,
     f"generation_config {gen}")
for i, t in tc["added_tokens_decoder"].items():
    need(added.get(t["content"]) == int(i), f"added_tokens_decoder {i}: {t['content']}")
need(added.get(tc["pad_token"]) is not None, "pad_token")
need(isinstance(tc["chat_template"], str) and "add_generation_prompt" in tc["chat_template"],
     "chat_template")
need(tc["model_max_length"] == cfg["max_position_embeddings"], "model_max_length")
print("; ".join(problems) if problems else
      f"torch_dtype {cfg['torch_dtype']} = shards {sorted(dtypes)}, bos {bos}, eos {eos}")
sys.exit(1 if problems else 0)
PY
    ) && r=1 || r=0
    check "$r" "$preset $dtype: $msg"
  done
done

# epserve reads the directory: generate takes generation_config.json's
# defaults, tokenize finds the special tokens.
ck="$tmp/tiny-qwen3-moe-bf16"
timeout 120 mpirun --oversubscribe -np 2 "$bin" generate --model "$ck" --chat "Hello" \
  --max-tokens 4 --seed 3 --json > "$tmp/gen.json" 2> "$tmp/gen.err"
check "$(python3 -c '
import json, sys
o = json.load(open(sys.argv[1])); s = o["sampling"]
ok = (s["temperature"] == 0.6 and s["top_k"] == 20 and s["top_p"] == 0.95
      and o["generation_config"].endswith("/generation_config.json") and o["completion_tokens"] >= 1)
print(1 if ok else 0)' "$tmp/gen.json" 2> /dev/null || echo 0)" \
  "generate on the make-model checkpoint: defaults from its generation_config.json ($(head -c 200 "$tmp/gen.json"; head -n 2 "$tmp/gen.err"))"
"$bin" tokenize --model "$ck" --text '<|im_start|>user<|im_end|>' > "$tmp/tok.json" 2>&1
check "$(python3 -c '
import json, sys
ids = json.load(open(sys.argv[1])); print(1 if ids[0] == 1022 and ids[-1] == 1023 else 0)' "$tmp/tok.json" 2> /dev/null || echo 0)" \
  "tokenize on the checkpoint: <|im_start|> 1022, <|im_end|> 1023 ($(cat "$tmp/tok.json"))"

# DeepSeek: greedy ids with --ignore-eos, then the same without: generation
# ends at the first eos_token_id of generation_config.json, if it comes.
ck="$tmp/tiny-deepseek-v2-f32"
timeout 120 mpirun --oversubscribe -np 2 "$bin" generate --model "$ck" --tokens 5,17,300,42,7 \
  --max-tokens 8 --temperature 0 --json > "$tmp/ds.json" 2> "$tmp/ds.err"
check "$(python3 -c '
import json, sys
o = json.load(open(sys.argv[1]))
eos = 1023
ids = o["ids"]
want = "stop" if eos in ids else "length"
ok = o["finish_reason"] == want and (eos not in ids or ids.index(eos) == len(ids) - 1)
print(1 if ok else 0)' "$tmp/ds.json" 2> /dev/null || echo 0)" \
  "generate on the DeepSeek checkpoint, greedy: $(head -c 160 "$tmp/ds.json")"

echo "$failures failed"
[[ $failures == 0 ]]
