#!/usr/bin/env bash
# The tree's C, CUDA and header files in the style of .clang-format.
#   scripts/format.sh           formats every tracked *.c, *.h, *.cu in place
#   scripts/format.sh --check   changes nothing; lists the files that differ
#                               and exits 1 when any does (CI runs this)
# The style is clang-format 14's reading of .clang-format (Debian 12's
# clang-format package); another major version may wrap some lines otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "format.sh: unknown option '$1' (expected --check or nothing)" >&2; exit 2 ;;
esac
cf=${CLANG_FORMAT:-clang-format}
command -v "$cf" >/dev/null || { echo "format.sh: $cf not found (scripts/deps.sh installs it)" >&2; exit 2; }
mapfile -t files < <(git ls-files '*.c' '*.h' '*.cu')
if [ "$check" = 0 ]; then
  "$cf" -i "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  "$cf" --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
  echo "format.sh: ${#bad[@]} file(s) differ from .clang-format ($("$cf" --version)):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  echo "run scripts/format.sh to format them" >&2
  exit 1
fi
echo "format: ${#files[@]} files match .clang-format"
