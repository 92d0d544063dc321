#!/usr/bin/env bash
# Installs what building, testing and the demo need, idempotently: a second run does nothing.
#   - Debian packages: protobuf-compiler (the CRI protocol crate needs protoc), curl, python3,
#     prometheus (the dashboard test), python3-matplotlib (the load test's plots)
#   - Rust with rustfmt and clippy (rustup toolchain from the machine)
#   - Go >= 1.26 (to build the control-plane binaries); if the machine's Go is missing or older,
#     the matching toolchain module is fetched from the Go module proxy
set -euo pipefail
log() { echo "[scripts/setup.sh] $*" >&2; }

GO_MIN_MINOR=26
GO_TOOLCHAIN_VERSION=go1.26.8

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
command -v python3 >/dev/null || need_apt+=(python3)
# The dashboard test runs every panel query against a real Prometheus.
command -v prometheus >/dev/null || need_apt+=(prometheus)
# kruise-loadtest draws its plots with Debian's python3 and matplotlib (loadtest/plot.py).
/usr/bin/python3 -c "import matplotlib" 2>/dev/null || need_apt+=(python3-matplotlib)
if ((${#need_apt[@]})); then
  log "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Rust: a toolchain must be present (crates come from crates.io); rustfmt and clippy are checked by CI.
[[ -f "$HOME/.cargo/env" ]] && source "$HOME/.cargo/env"
command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }
if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || { log "adding rustup component $c"; rustup component add "$c"; }
  done
fi

# Go for the control-plane build.
go_ok() {
  command -v go >/dev/null || return 1
  local v; v=$(go env GOVERSION 2>/dev/null) || return 1   # e.g. go1.26.8
  local minor=${v#go1.}; minor=${minor%%.*}
  [[ "$minor" =~ ^[0-9]+$ ]] && ((minor >= GO_MIN_MINOR))
}
[[ -x /usr/local/go/bin/go ]] && export PATH="/usr/local/go/bin:$PATH"
if ! go_ok; then
  dest="$HOME/.local/kruise-go/$GO_TOOLCHAIN_VERSION"
  if [[ ! -x "$dest/bin/go" ]]; then
    log "fetching Go $GO_TOOLCHAIN_VERSION from the Go module proxy"
    tmp=$(mktemp -d)
    curl -fsSL -o "$tmp/go.zip" \
      "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-${GO_TOOLCHAIN_VERSION}.linux-amd64.zip"
    python3 - "$tmp/go.zip" "$tmp/x" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(path, mode)
PY
    mkdir -p "$(dirname "$dest")"
    mv "$tmp/x/golang.org/toolchain@v0.0.1-${GO_TOOLCHAIN_VERSION}.linux-amd64" "$dest"
    rm -rf "$tmp"
  fi
  export PATH="$dest/bin:$PATH"
  go_ok || { log "Go >= 1.$GO_MIN_MINOR still not available"; exit 1; }
fi
log "ready: $(cargo --version), $(go version | cut -d' ' -f3), $(protoc --version)"
