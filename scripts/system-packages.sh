#!/usr/bin/env bash
# The distribution's programs that some tests use: Chromium (the dashboard's browser tests),
# Node.js (the dashboard's pure modules under `node --test`: tests/dashboard/), espeak-ng and sox
# (speech for the real AI's tests and `callstream simulate`).
# Installed with apt-get when this runs as root on Debian/Ubuntu and one is missing; otherwise
# it says exactly what is missing and how to get it, and the tests that need it say so too.
# On a developer's machine it never fails the build (the rest of the suite runs without them);
# in CI (CI set) a program still missing fails it, as the tests that need it would
# (tests/needs.py): a failed apt-get must not turn them into quiet skips.
set -uo pipefail
declare -A PACKAGE_OF=([chromium]=chromium [node]=nodejs [espeak-ng]=espeak-ng [sox]=sox)
missing=()
for program in chromium node espeak-ng sox; do
  command -v "$program" >/dev/null 2>&1 || missing+=("${PACKAGE_OF[$program]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing the distribution's ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
      || echo "WARNING: apt-get could not install ${missing[*]}; the tests that need them will say so"
  fi
else
  echo "WARNING: missing ${missing[*]}: install them with your package manager" \
    "(Debian/Ubuntu: sudo apt-get install ${missing[*]}); the tests that need them will say so"
fi
still=()
for program in chromium node espeak-ng sox; do
  command -v "$program" >/dev/null 2>&1 || still+=("$program")
done
case "${CI:-}" in
  ""|0|false|no) exit 0 ;;
esac
if [ ${#still[@]} -gt 0 ]; then
  echo "ERROR: CI needs ${still[*]} for the tests that use them, and could not install them"
  exit 1
fi
exit 0
