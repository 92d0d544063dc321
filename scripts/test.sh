#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests and the integration tests against a
# real local control plane (built from Go modules on first use, then cached).
# Installs what it needs itself (scripts/setup.sh); safe to run on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/setup.sh

step() { echo "==> $*" >&2; }
t0=$(date +%s)
step "control-plane binaries (cached after the first build)"
tests/cluster/build.sh >/dev/null
step "cargo fmt --check"
cargo fmt --check
step "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
step "cargo test (API server with ShardedListAndWatch on)"
cargo test --locked --lib --tests
# The same integration tests against an API server without server-side sharding: everything must
# still work, with the shard filtering done client-side.
step "integration tests again, ShardedListAndWatch off"
KRUISE_TEST_FEATURE_GATES=ShardedListAndWatch=false cargo test --locked --test integration
# And once more with every kruise-manager and kruise-daemon running as the chart's ServiceAccounts
# under exactly the chart's RBAC (deploy/helm/kruise/templates/rbac.yaml): the RBAC it installs is
# enough for every scenario.
step "integration tests again, as the chart's ServiceAccounts"
KRUISE_TEST_RBAC=chart cargo test --locked --test integration
# Every load-test scenario once at a small size, so the harness itself keeps working; the
# reports land in <cargo target dir>/loadtest-ci (figures from a debug build: not benchmarks).
step "load-test scenarios at small size"
cargo build --locked --bins
lt="${CARGO_TARGET_DIR:-target}/debug/kruise-loadtest"
out="${CARGO_TARGET_DIR:-target}/loadtest-ci"
$lt sidecarset-rollout --pods 100 --namespaces 5 --nodes 5 --replicas 2 --out "$out" >/dev/null
$lt pod-create-with-injection --pods 50 --rate 20 --sidecarsets 0,2 --out "$out" >/dev/null
$lt probe-marker-churn --nodes 10 --pods 100 --namespaces 2 --replicas 2 --flips 20 --steady-secs 10 --period-secs 2 --out "$out" >/dev/null
$lt image-pull-fanout --nodes 20 --parallelism 20,5 --replicas 2 --out "$out" >/dev/null
$lt replica-failover --namespaces 60 --out "$out" >/dev/null
for s in sidecarset-rollout pod-create-with-injection probe-marker-churn image-pull-fanout replica-failover; do
  [[ -s "$out/$s.json" && -s "$out/$s.md" ]] || { echo "load test $s wrote no report" >&2; exit 1; }
done
# README command (a) end to end: the demo cluster, 3 replicas at work, and the rollout load test
# driven against it through the API only (--kubeconfig), as against any cluster. Stopped after.
step "the demo (scripts/demo.sh), then scripts/demo.sh down"
trap 'scripts/demo.sh down >/dev/null 2>&1 || true' EXIT
scripts/demo.sh >"$out/demo.log" 2>&1 || { tail -40 "$out/demo.log" >&2; echo "the demo failed" >&2; exit 1; }
grep -q "^| kruise-manager 2" "$out/demo.log" || { echo "the demo printed no load-test report" >&2; exit 1; }
scripts/demo.sh down >/dev/null
trap - EXIT
echo "all checks passed in $(( $(date +%s) - t0 ))s" >&2
