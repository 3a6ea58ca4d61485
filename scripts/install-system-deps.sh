#!/usr/bin/env bash
# Install the Debian packages that `make run` (run) or `make test` (test) needs, if missing.
# Idempotent and quiet when everything is present.
set -euo pipefail

want=()
need() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed" || want+=("$1"); }

# A Python with venv support (Debian splits venv out of python3).
if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then need python3-venv; fi

case "${1:-run}" in
  run) ;;
  test)
    need postgresql   # the suite runs on SQLite and on a private PostgreSQL cluster it starts
    ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac

[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "missing packages: ${want[*]} (run as root or install them)" >&2; exit 1; fi
else SUDO=; fi
echo "Installing Debian packages: ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
