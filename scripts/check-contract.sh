#!/usr/bin/env bash
# Checks that every test docs/contract.md names (`Suite.Test`) exists in the
# sources as TEST(Suite, Test), TEST_F(...) or TEST_P(...), so that the
# contract and its tests cannot drift apart.
#   scripts/check-contract.sh [contract.md]
# Prints each missing name and "contract: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
DOC=${1:-docs/contract.md}
if [ ! -r "$DOC" ]; then
  echo "check-contract: cannot read $DOC"
  exit 1
fi
# Every test the sources define, as Suite.Test.
# (Files joined into one line: clang-format may wrap a long name.)
defined=$(git ls-files '*.cc' 2>/dev/null | xargs cat | tr '\n' ' ' |
  grep -oE 'TEST(_F|_P)?\(\s*[A-Za-z0-9_]+,\s*[A-Za-z0-9_]+\)' |
  sed -E 's/TEST(_F|_P)?\(\s*([A-Za-z0-9_]+),\s*([A-Za-z0-9_]+)\)/\2.\3/' |
  sort -u)
named=$(grep -oE '`[A-Z][A-Za-z0-9_]*\.[A-Z][A-Za-z0-9_]*`' "$DOC" |
  tr -d '`' | sort -u)
passed=0
failed=0
for t in $named; do
  if grep -qxF "$t" <<<"$defined"; then
    passed=$((passed + 1))
  else
    echo "check-contract: $DOC names $t, which no test defines"
    failed=$((failed + 1))
  fi
done
if [ "$passed" -eq 0 ]; then
  echo "check-contract: $DOC names no test"
  failed=$((failed + 1))
fi
echo "contract: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
