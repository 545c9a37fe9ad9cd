#!/usr/bin/env bash
# The distribution's programs that some tests use: Chromium (the dashboard's browser tests),
# espeak-ng and sox (speech for the real AI's tests and `callstream simulate`).
# Installed with apt-get when this runs as root on Debian/Ubuntu and one is missing; otherwise
# it says exactly what is missing and how to get it, and the tests that need it say so too.
# Never fails the build: the rest of the suite runs without them.
set -uo pipefail
declare -A PACKAGE_OF=([chromium]=chromium [espeak-ng]=espeak-ng [sox]=sox)
missing=()
for program in chromium espeak-ng sox; do
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
exit 0
