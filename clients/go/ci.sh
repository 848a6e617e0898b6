#!/usr/bin/env bash
# CI for the Go client, offline: Debian's Go toolchain, protoc plugins and Go sources (/usr/share/gocode), no
# module proxy.
#
#   1. installs the Debian packages below if any is missing (apt-get, non-interactive);
#   2. gen-check: regenerates the stubs with buf into a temporary directory and diffs them against
#      clients/go/agentaudit (the committed ones);
#   3. builds the example offline: a vendor directory assembled from /usr/share/gocode in a temporary copy of
#      the module, then `go vet` and `go build -mod=vendor`;
#   4. starts a real sidecar (`agentaudit dev` in a temporary directory, unix sockets only, so it never clashes
#      with another sidecar on this host), waits for its gRPC health check, runs the example against it, stops
#      it with SIGTERM and verifies the journal it wrote.
#
# Fails on any difference. Idempotent; everything it creates lives in one temporary directory, removed on exit
# together with the sidecar. Every step is bounded by a timeout.
#
# Environment: AGENTAUDIT_BIN (default .venv/bin/agentaudit), BUF (default .venv/bin/buf), both relative to the
# repository root unless absolute; GO (default go); KEEP_WORKDIR=1 keeps the temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GO_DIR=$ROOT/clients/go
MODULE=github.com/agentaudit/agentaudit/clients/go
GOCODE=/usr/share/gocode/src

abs() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ROOT/$1" ;; esac; }
AGENTAUDIT_BIN=$(abs "${AGENTAUDIT_BIN:-.venv/bin/agentaudit}")
BUF=$(abs "${BUF:-.venv/bin/buf}")
GO=${GO:-go}

# golang-github-golang-protobuf-1-5-dev is named explicitly: golang-google-grpc-dev accepts the 1.3 API instead,
# which predates google.golang.org/protobuf and cannot marshal the generated messages.
APT_PACKAGES=(
  golang-go
  protoc-gen-go
  protoc-gen-go-grpc
  golang-google-grpc-dev
  golang-google-protobuf-dev
  golang-google-genproto-dev
  golang-github-golang-protobuf-1-5-dev
)

started=$SECONDS
step() { printf '==> [%3ds] %s\n' "$((SECONDS - started))" "$*"; }
die() { printf 'clients/go/ci.sh: %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/agentaudit-go-ci.XXXXXX")
sidecar_pid=
cleanup() {
  local rc=$?
  if [[ -n $sidecar_pid ]] && kill -0 "$sidecar_pid" 2>/dev/null; then
    kill -TERM "$sidecar_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$sidecar_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$sidecar_pid" 2>/dev/null || true
    wait "$sidecar_pid" 2>/dev/null || true
  fi
  if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. Debian packages --------------------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
    sudo=(sudo -n)
  fi
  apt_get() {
    timeout 600 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get -qq -o=Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=120 "$@"
  }
  apt_get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt_get update && apt_get install -y --no-install-recommends "${missing[@]}" >/dev/null; } ||
    die "apt-get could not install ${missing[*]}"
else
  step "Debian packages present"
fi
[[ -x $BUF ]] || die "buf not found at $BUF (run make install, or set BUF)"
[[ -x $AGENTAUDIT_BIN ]] || die "agentaudit not found at $AGENTAUDIT_BIN (run make install, or set AGENTAUDIT_BIN)"
printf '    %s, %s, %s, buf %s\n' "$("$GO" version)" "$(/usr/bin/protoc-gen-go --version)" \
  "$(/usr/bin/protoc-gen-go-grpc --version)" "$("$BUF" --version)"

# --- 2. gen-check --------------------------------------------------------------------------------------------
step "gen-check: buf generate into a temporary directory"
# Debian's plugins first on PATH: the stubs record the protoc-gen-go version they were generated with.
(cd "$GO_DIR" && PATH=/usr/bin:$PATH timeout 120 "$BUF" generate -o "$work/gen")
if ! diff -ru "$GO_DIR/agentaudit" "$work/gen/agentaudit" >"$work/gen.diff"; then
  head -n 60 "$work/gen.diff" >&2
  die "the Go stubs in clients/go/agentaudit are stale: run (cd clients/go && ../../.venv/bin/buf generate) and commit"
fi
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  untracked=$(git -C "$ROOT" status --porcelain --untracked-files=all -- clients/go/agentaudit | grep '^??' || true)
  [[ -z $untracked ]] || die "generated files not added to git: $untracked"
fi

# --- 3. offline build ----------------------------------------------------------------------------------------
step "building the example offline (vendor from $GOCODE)"
# A GOPATH holding a copy of the module, with Debian's Go sources behind it, lists every package the example
# needs; each is copied into the copy's vendor/ under the module that go.mod requires for it.
gopath=$work/gopath
mod=$gopath/src/$MODULE
mkdir -p "$mod"
cp -r "$GO_DIR/go.mod" "$GO_DIR/agentaudit" "$GO_DIR/examples" "$mod/"
export GOFLAGS='' GOPROXY=off GOSUMDB=off GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
deps=$(cd "$mod" && GO111MODULE=off GOPATH="$gopath:${GOCODE%/src}" timeout 120 \
  "$GO" list -deps -f '{{if not .Standard}}{{.ImportPath}}{{end}}' ./...)
# Requirements of go.mod, "path version" per line (both require blocks).
requires=$(awk '/^require \(/{b=1; next} b && /^\)/{b=0} b && NF>=2 {print $1, $2} /^require [^(]/{print $2, $3}' \
  "$mod/go.mod")
declare -A packages=()
for pkg in $deps; do
  [[ $pkg == "$MODULE" || $pkg == "$MODULE"/* ]] && continue
  owner=
  while read -r path _; do
    if [[ $pkg == "$path" || $pkg == "$path"/* ]] && ((${#path} > ${#owner})); then owner=$path; fi
  done <<<"$requires"
  [[ -n $owner ]] || die "package $pkg (needed by the example) belongs to no module required by clients/go/go.mod"
  [[ -d $GOCODE/$pkg ]] || die "package $pkg is not in $GOCODE"
  mkdir -p "$mod/vendor/$pkg"
  find "$GOCODE/$pkg" -maxdepth 1 -type f ! -name '*_test.go' -exec cp -t "$mod/vendor/$pkg" {} +
  packages[$owner]+="$pkg"$'\n'
done
while read -r path version; do
  gover=$(awk '$1 == "go" {print $2; exit}' "$GOCODE/$path/go.mod" 2>/dev/null || true)
  printf '# %s %s\n## explicit%s\n%s' "$path" "$version" "${gover:+; go $gover}" "${packages[$path]:-}"
done <<<"$requires" >"$mod/vendor/modules.txt"
(
  cd "$mod"
  export GO111MODULE=on GOFLAGS=-mod=vendor
  unformatted=$(gofmt -l examples agentaudit)
  [[ -z $unformatted ]] || die "not gofmt-formatted: $unformatted"
  timeout 300 "$GO" vet -trimpath ./...
  timeout 300 "$GO" build -trimpath -o "$work/support_agent" ./examples/support_agent
)

# --- 4. against a real sidecar -------------------------------------------------------------------------------
step "starting agentaudit dev in $work/sidecar"
sidecar=$work/sidecar
sock=$sidecar/gateway.sock
"$AGENTAUDIT_BIN" dev --dir "$sidecar" --listen "unix://$sock" --operator-listen "unix://$sidecar/operator.sock" \
  >"$work/sidecar.log" 2>&1 &
sidecar_pid=$!
healthy=
for _ in $(seq 60); do  # at most ~30 s
  kill -0 "$sidecar_pid" 2>/dev/null || { cat "$work/sidecar.log" >&2; die "the sidecar exited during startup"; }
  if [[ -S $sock ]] && timeout 5 "$BUF" curl --protocol grpc --http2-prior-knowledge --unix-socket "$sock" \
    --connect-timeout 2 --timeout 3s -d '{"service":"agentaudit.v1.GatewayService"}' \
    http://localhost/grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then
    healthy=1
    break
  fi
  sleep 0.5
done
[[ -n $healthy ]] || { cat "$work/sidecar.log" >&2; die "the sidecar did not become healthy within 30 s"; }

step "running the Go example against unix://$sock"
rc=0
timeout 60 "$work/support_agent" -target "unix://$sock" -timeout 5s || rc=$?
((rc == 0)) || { tail -n 20 "$work/sidecar.log" >&2; die "the Go example failed (exit status $rc)"; }

step "stopping the sidecar (SIGTERM)"
kill -TERM "$sidecar_pid"
for _ in $(seq 150); do kill -0 "$sidecar_pid" 2>/dev/null || break; sleep 0.1; done  # at most 15 s
kill -0 "$sidecar_pid" 2>/dev/null && { tail -n 20 "$work/sidecar.log" >&2; die "the sidecar ignored SIGTERM for 15 s"; }
rc=0
wait "$sidecar_pid" || rc=$?
sidecar_pid=
((rc == 0)) || { tail -n 20 "$work/sidecar.log" >&2; die "the sidecar exited with status $rc after SIGTERM"; }
timeout 60 "$AGENTAUDIT_BIN" verify "$sidecar/journal.db" --public-key "$sidecar/signing.pub" >"$work/verify.log" 2>&1 ||
  { cat "$work/verify.log" >&2; die "agentaudit verify rejected the journal the example wrote"; }
tail -n 1 "$work/verify.log"

step "ok: Go client CI passed in $((SECONDS - started)) s"
