#!/usr/bin/env bash
# Debian packages the test suite uses beyond Python: a JRE for PySpark, Chromium for the
# dashboard's browser tests. Installs what is missing when run as root; otherwise says what is
# missing (those tests then skip with a reason). PostgreSQL is set up by .ci/postgres.sh.
set -uo pipefail
missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  echo "not root: cannot install ${missing[*]}; the tests that need them will skip" >&2
  exit 1
fi
