#!/usr/bin/env bash
# Installs the non-Python tools the tests use, from Debian's packages, when they are missing:
#   promtool (package prometheus): checks the /metrics exposition (tests/test_observability.py)
#   tini: PID 1 of the container image, run by the image smoke test (tests/test_image_smoke.py)
#   redis-server (package redis-server): Redis 7 for shared limits (tests/test_shared_limits.py; .ci/run starts it)
#   chromium: the headless browser Playwright drives in tests/test_console_browser.py (never a downloaded one)
# and checks for kubectl (>= 1.27, for `kubectl kustomize` in tests/test_deploy_manifests.py), which Debian
# does not package in a usable version: install it from your distribution of Kubernetes tools.
# Needs root for apt-get; otherwise it names what is missing and fails.
set -euo pipefail

if ! command -v kubectl >/dev/null; then
  echo "kubectl (>= 1.27) is required by tests/test_deploy_manifests.py (kubectl kustomize)" >&2
  exit 1
fi

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v tini >/dev/null || missing+=(tini)
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing tools; install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
