#!/usr/bin/env bash
# The main job: a local cluster with kruise-rs doing real work.
#   scripts/demo.sh        start (or restart) the demo and show what it does; it keeps running
#   scripts/demo.sh down   stop kruise-rs and the cluster
# Starts the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok with
# fake nodes), then 3 kruise-manager replicas that split the shards through leases, and
# kruise-daemon in simulated mode serving every kwok node; shows them at work, then runs the
# sidecarset-rollout load test against it (through the API, as against any cluster) and prints
# its report. Installs what it needs itself.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
demo="$root/target/demo"
# Where cargo puts the binaries (CI keeps its target directory elsewhere).
bin="${CARGO_TARGET_DIR:-target}/debug"
REPLICAS=3
NODES=${NODES:-5}
PODS=${PODS:-300}

stop_processes() {
  shopt -s nullglob
  for pidfile in "$demo"/*.pid; do
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

if [[ "${1:-}" == "down" ]]; then
  stop_processes
  [[ -x "$bin/kruise-dev" ]] && "$bin/kruise-dev" down
  exit 0
fi

source scripts/setup.sh
echo "==> control-plane binaries (built from Go modules on first use, then cached)" >&2
tests/cluster/build.sh >/dev/null
echo "==> building kruise-rs" >&2
cargo build --locked --bins
mkdir -p "$demo"
stop_processes

echo "==> local cluster" >&2
"$bin/kruise-dev" up --nodes "$NODES" >/dev/null
eval "$("$bin/kruise-dev" env)"
kubectl get nodes
kubectl create namespace kruise-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
echo "==> kruise CRDs" >&2
kubectl apply --server-side --field-manager=kruise-demo -f deploy/helm/kruise/crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s -f deploy/helm/kruise/crds/ >/dev/null
kubectl get crd -o custom-columns=CRD:.metadata.name,SCOPE:.spec.scope | grep -E "CRD|kruise.io"
# Webhook configurations of an earlier run point at replicas that are gone; they come back below.
kubectl delete mutatingwebhookconfiguration kruise-mutating-webhook-configuration --ignore-not-found >/dev/null
kubectl delete validatingwebhookconfiguration kruise-validating-webhook-configuration --ignore-not-found >/dev/null
echo "==> the example manifests (examples/), as kubectl shows them" >&2
kubectl apply --server-side --field-manager=kruise-demo -f examples/ >/dev/null
kubectl get sidecarsets,clonesets,daemonsets.apps.kruise.io,broadcastjobs,advancedcronjobs,imagepulljobs,workloadspreads -A

echo "==> kruise-manager x$REPLICAS and kruise-daemon (simulated)" >&2
start() {  # name, then the command
  local name=$1; shift
  nohup "$@" >"$demo/$name.log" 2>&1 &
  echo $! >"$demo/$name.pid"
}
for i in $(seq 0 $((REPLICAS - 1))); do
  start "kruise-manager-$i" "$bin/kruise-manager" --kubeconfig "$KUBECONFIG" --identity "kruise-manager-$i" \
    --metrics-addr "127.0.0.1:1808$i" --health-probe-addr "127.0.0.1:1800$i" --demo-controller \
    --webhook-port "1987$i" --webhook-host 127.0.0.1
done
start kruise-daemon "$bin/kruise-daemon" --kubeconfig "$KUBECONFIG" --simulated --addr 127.0.0.1:10221

wait_ready() {  # url, what
  for _ in $(seq 150); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "$2 did not become ready; log: $demo" >&2; exit 1
}
for i in $(seq 0 $((REPLICAS - 1))); do wait_ready "http://127.0.0.1:1800$i/readyz" "kruise-manager-$i"; done
wait_ready http://127.0.0.1:10221/readyz kruise-daemon

# Give the replicas a few lease rounds to converge on their fair shares (32 shards: 11/11/10).
for _ in $(seq 60); do
  split=$(kubectl get leases -n kruise-system -l kruise.io/lease-role=shard \
    -o jsonpath='{range .items[*]}{.spec.holderIdentity}{"\n"}{end}' | grep . | sort | uniq -c | awk '{print $1}' | sort -n | xargs)
  [[ "$split" == "10 11 11" ]] && break
  sleep 0.5
done
# ...and for each replica's metrics to catch up with its leases.
sleep 2
echo
echo "Shard leases in kruise-system, by holder:"
kubectl get leases -n kruise-system -l kruise.io/lease-role=shard \
  -o jsonpath='{range .items[*]}{.spec.holderIdentity}{"\n"}{end}' | sort | uniq -c
echo
for i in $(seq 0 $((REPLICAS - 1))); do
  echo "kruise-manager-$i  http://127.0.0.1:1808$i/metrics:"
  curl -fsS "http://127.0.0.1:1808$i/metrics" | grep -E '^kruise_(shards_held|manager_live_replicas|manager_is_leader) ' | sed 's/^/    /'
done
echo
echo "==> the demo controller: ConfigMaps labelled kruise.io/demo=true in 6 namespaces" >&2
for ns in payments search checkout analytics identity media; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl create configmap greeting -n "$ns" --from-literal=hello=world --dry-run=client -o yaml |
      kubectl label --local -f - kruise.io/demo=true -o yaml | kubectl apply -f - >/dev/null
done
for _ in $(seq 60); do
  n=$(kubectl get configmaps -A -l kruise.io/demo=true \
    -o jsonpath='{range .items[*]}{.metadata.annotations.kruise\.io/demo-reconciled-by}{"\n"}{end}' | grep -c . || true)
  [[ "$n" == 6 ]] && break
  sleep 0.5
done
echo "Each is stamped by the replica that holds its namespace's shard:"
kubectl get configmaps -A -l kruise.io/demo=true \
  -o custom-columns='NAMESPACE:.metadata.namespace,NAME:.metadata.name,RECONCILED-BY:.metadata.annotations.kruise\.io/demo-reconciled-by'

echo
echo "==> SidecarSet logtail (examples/): injected into new pods, then upgraded in place" >&2
# The webhook configurations; the leader points them at itself and keeps the CA current.
"$bin/kruise-manager" webhook-configurations | kubectl create -f - >/dev/null 2>&1 || true
for _ in $(seq 100); do
  url=$(kubectl get mutatingwebhookconfiguration kruise-mutating-webhook-configuration \
    -o jsonpath='{.webhooks[0].clientConfig.url}' 2>/dev/null || true)
  [[ "$url" == https://127.0.0.1:* ]] && break
  sleep 0.3
done
# Applied again now that the webhooks answer: stored defaulted and hashed, as pods will record it
# (applied before, it was stored as written; its first defaulting would look like a non-image
# change, which is never upgraded in place).
kubectl apply --server-side --field-manager=kruise-demo -f examples/sidecarset-logtail.yaml >/dev/null
kubectl delete pods -n media -l logging=enabled --wait=true >/dev/null 2>&1 || true
logtail_pod() {  # name, app, node
  cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: media
  labels: {logging: enabled, app_name: $2, app-container: main}
spec:
  nodeName: kwok-node-$3
  containers:
  - name: main
    image: $2:1.0
    env: [{name: TZ, value: Europe/Berlin}, {name: CLUSTER_NAME, value: demo}, {name: REGION, value: local}]
    volumeMounts: [{name: app-logs, mountPath: /var/log/app}]
  volumes: [{name: app-logs, emptyDir: {}}]
YAML
}
i=0
for app in nginx nginx web-server web-server; do
  name="$app-$i"
  for _ in $(seq 40); do  # the webhook reads SidecarSets from a watch: retry until it has seen logtail
    logtail_pod "$name" "$app" $((i % NODES)) | kubectl apply -f - >/dev/null
    kubectl get pod -n media "$name" -o jsonpath='{.spec.containers[*].name}' | grep -qw logtail && break
    kubectl delete pod -n media "$name" --wait=true >/dev/null
    sleep 0.3
  done
  i=$((i + 1))
done
wait_status() {  # updatedReadyPods wanted, for the current generation
  for _ in $(seq 150); do
    got=$(kubectl get sidecarset logtail -o jsonpath='{.metadata.generation}/{.status.observedGeneration}/{.status.updatedReadyPods}')
    [[ "$got" == */*/"$1" && "${got%%/*}" == "$(cut -d/ -f2 <<<"$got")" ]] && return 0
    sleep 0.2
  done
  echo "the SidecarSet did not reach $1 updated and ready pods; logs: $demo" >&2; exit 1
}
wait_status 4
kubectl get sidecarset logtail
echo "Pods, each with logtail injected (note AfterAppContainer and the transferred env):"
kubectl get pods -n media -l logging=enabled -o custom-columns='POD:.metadata.name,CONTAINERS:.spec.containers[*].name,LOGTAIL:.spec.containers[?(@.name=="logtail")].image'
echo "New image 2.4.2: kruise-rs restarts only the logtail containers, 10% of the pods at a time:"
sed 's/logtail:2.4.1/logtail:2.4.2/' examples/sidecarset-logtail.yaml |
  kubectl apply --server-side --field-manager=kruise-demo -f - >/dev/null
wait_status 4
kubectl get sidecarset logtail
kubectl get pods -n media -l logging=enabled -o custom-columns='POD:.metadata.name,LOGTAIL:.spec.containers[?(@.name=="logtail")].image,LOGTAIL-RESTARTS:.status.containerStatuses[?(@.name=="logtail")].restartCount,MAIN-RESTARTS:.status.containerStatuses[?(@.name=="main")].restartCount'
# Back to the example's version, so a re-run starts where it says.
kubectl apply --server-side --field-manager=kruise-demo -f examples/sidecarset-logtail.yaml >/dev/null

echo
echo "kruise-daemon  http://127.0.0.1:10221/metrics:"
curl -fsS http://127.0.0.1:10221/metrics | grep -E '^kruise_daemon_nodes_served ' | sed 's/^/    /'

echo
echo "==> load test: a SidecarSet rolled out over $PODS pods on the $NODES kwok nodes, driven through the Kubernetes API only" >&2
managers=$(seq -s, -f "127.0.0.1:1808%g" 0 $((REPLICAS - 1)))
report="$demo/loadtest"
"$bin/kruise-loadtest" sidecarset-rollout --kubeconfig "$KUBECONFIG" \
  --manager-metrics "$managers" --daemon-metrics 127.0.0.1:10221 \
  --pods "$PODS" --namespaces 6 --nodes "$NODES" --out "$report" >"$demo/loadtest.log" 2>&1 ||
  { echo "the load test failed; see $demo/loadtest.log" >&2; exit 1; }
# The report, short: its result table and what each replica spent (a debug build: not a benchmark).
awk '/^## /{p = ($0 ~ /^## (In-place|Processes)/)} /^!\[/{p = 0} p' "$report/sidecarset-rollout.md"
echo "Full report: $report/sidecarset-rollout.md (JSON next to it), plots: $(cd "$report" && ls *.png 2>/dev/null | xargs)"
echo "Metrics: $(seq -s' ' -f 'http://127.0.0.1:1808%g/metrics' 0 $((REPLICAS - 1))) http://127.0.0.1:10221/metrics"
cat <<MSG

The demo keeps running. Try:
  eval "\$($bin/kruise-dev env)"     # KUBECONFIG and the matching kubectl
  kill -TERM \$(cat target/demo/kruise-manager-0.pid)   # its shards move to the others at once
  kubectl get leases -n kruise-system
Logs: target/demo/*.log and target/dev-cluster/logs/. Stop everything: scripts/demo.sh down
MSG
