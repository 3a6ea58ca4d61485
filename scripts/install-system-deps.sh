#!/usr/bin/env bash
# Install the Debian packages that `make run` (run), `make image` (image), `make test` (test),
# `make bench` (bench) or `make bolt` (bolt) needs, if missing.
# Idempotent and quiet when everything is present.
set -euo pipefail

want=()
need() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed" || want+=("$1"); }

# A Python with venv support (Debian splits venv out of python3).
if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then need python3-venv; fi

# `cloudcontainer image build --docker`: a Docker Engine to load the root filesystem into,
# debootstrap for its Debian part, bubblewrap to verify it.
image_deps() { need docker.io; need debootstrap; need bubblewrap; }

# The `local` sandbox runtime (the default): bubblewrap, slirp4netns for each sandbox's network,
# util-linux (setsid, unshare, nsenter, setpriv) and iproute2 (named netns); debootstrap builds
# the sandboxes' root filesystem (`cloudcontainer image build`), which holds everything they run
# (nothing of the host's /usr is visible inside).
run_deps() {
  need bubblewrap; need slirp4netns; need iptables; need libseccomp2; need util-linux; need iproute2; need python3
  need ca-certificates; need procps; need debootstrap
  # Disk quotas (default_disk_mb > 0, on either runtime): mkfs.ext4 makes each sandbox's disk
  # image, mount/umount loop-mount it.
  need e2fsprogs; need mount
}

# Every local sandbox runs as the same host user id, and each watched workspace holds one inotify
# instance: the kernel's default of 128 per user would cap watched sandboxes at 128.
inotify_limits() {
  local current; current=$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 0)
  if [ "$current" -lt 8192 ] && [ "$(id -u)" -eq 0 ]; then
    echo "fs.inotify.max_user_instances = 8192" > /etc/sysctl.d/60-cloudcontainer.conf
    sysctl -q -w fs.inotify.max_user_instances=8192 \
      && echo "Raised fs.inotify.max_user_instances to 8192 (/etc/sysctl.d/60-cloudcontainer.conf)"
  fi
}

case "${1:-run}" in
  run) run_deps; inotify_limits ;;
  image) image_deps ;;
  test)
    run_deps; inotify_limits
    need postgresql   # the suite runs on SQLite and on a private PostgreSQL cluster it starts
    image_deps        # the sandbox image is built once per session; the session starts dockerd
    # Redis: the state several gateways share (login throttles so far); the tests start their
    # own server (tests/support/redis.py). Chromium runs the preview tests (tests/support/browser.py, through
    # playwright); its Depends bring the libraries it needs headless, and fonts-liberation (only
    # recommended) gives pages the metric-compatible Arial/Times/Courier they ask for.
    need redis-server; need chromium; need fonts-liberation
    need ripgrep      # the agent's search runs rg; tests/agent run the agent on the host
    # Node.js with npm: clients/js's suites and bolt.diy's (pnpm through corepack or npx).
    command -v npm >/dev/null || { need nodejs; need npm; }
    ;;
  bench) run_deps; inotify_limits; image_deps; need wrk ;;  # wrk drives P4 (python -m bench)
  # `make bolt`: bolt.diy's dev server and its pnpm need Node.js with npm (any that is there).
  bolt) run_deps; inotify_limits; command -v npm >/dev/null || { need nodejs; need npm; } ;;
  *) echo "usage: $0 run|image|test|bench|bolt" >&2; exit 2 ;;
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
