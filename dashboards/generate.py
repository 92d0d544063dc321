#!/usr/bin/env python3
"""Writes the Grafana dashboards (JSON, Grafana 10+ schema) into the directory given:
`python3 dashboards/generate.py dashboards`. Edit the panels here, regenerate, commit both;
tests/integration/dashboards.rs runs every query against a real Prometheus."""
import json
DS = {"type": "prometheus", "uid": "${datasource}"}
def panel(pid, title, targets, x, y, unit, w, kind):
    p = {"id": pid, "type": kind, "title": title, "datasource": DS,
         "gridPos": {"x": x, "y": y, "w": w, "h": 8},
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
         "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": l, "datasource": DS} for i, (e, l) in enumerate(targets)]}
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    else:
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return p
def dashboard(uid, title, desc, rows):
    panels, pid, y = [], 1, 0
    for row_title, items in rows:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        pid += 1; y += 1; x = 0
        for it in items:
            title, targets, unit = it[0], it[1], it[2]
            kind = it[3] if len(it) > 3 else "timeseries"
            w = 12 if kind == "timeseries" else 6
            if x + w > 24:
                x = 0; y += 8
            panels.append(panel(pid, title, targets, x, y, unit, w, kind))
            pid += 1; x += w
        y += 8
    return {"uid": uid, "title": title, "description": desc, "tags": ["kruise-rs"],
            "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1,
            "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "timezone": "",
            "annotations": {"list": []},
            "templating": {"list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
                 "current": {}, "hide": 0, "refresh": 1},
                {"name": "job", "type": "query", "label": "Job", "datasource": DS,
                 "query": {"query": "label_values(up, job)", "refId": "job"}, "definition": "label_values(up, job)",
                 "includeAll": True, "multi": True, "allValue": ".*",
                 "current": {"text": "All", "value": "$__all"}, "refresh": 2, "hide": 0}]},
            "panels": panels}
def sel(extra=""):
    return '{job=~"$job"' + ("," + extra if extra else "") + '}'
J = sel()
R = "[$__rate_interval]"
def rate(metric, by, extra=""):
    return "sum by (" + by + ") (rate(" + metric + sel(extra) + R + "))"
def q(quant, metric, by, extra=""):
    return "histogram_quantile(" + quant + ", sum by (" + by + ") (rate(" + metric + "_bucket" + sel(extra) + R + ")))"
def state(s):
    return 'sum by (sidecarset) (kruise_sidecarset_pods' + sel('state="' + s + '"') + ')'

overview = dashboard("kruise-rs-overview", "kruise-rs / Overview",
  "Manager replicas: reconciles, errors, latency, queues, API writes and throttling, shard ownership and handoffs, watches, webhooks.",
  [("Replicas and shards", [
     ("Shards held per replica", [("sum by (instance) (kruise_shards_held" + J + ")", "{{instance}}")], "short"),
     ("Shard handoffs per replica", [("sum by (instance, direction) (increase(kruise_shard_handoffs_total" + J + R + "))", "{{instance}} {{direction}}")], "short"),
     ("Live replicas", [("max(kruise_manager_live_replicas" + J + ")", "live replicas")], "short", "stat"),
     ("Leader", [("max by (instance) (kruise_manager_is_leader" + J + ")", "{{instance}}")], "short", "stat"),
     ("Lease errors", [(rate("kruise_lease_errors_total", "instance, operation"), "{{instance}} {{operation}}")], "ops"),
     ("CPU per process", [(rate("process_cpu_seconds_total", "job, instance"), "{{job}} {{instance}}")], "percentunit"),
     ("Resident memory per process", [("sum by (job, instance) (process_resident_memory_bytes" + J + ")", "{{job}} {{instance}}"), ("sum by (job, instance) (kruise_process_peak_resident_memory_bytes" + J + ")", "{{job}} {{instance}} peak")], "bytes")]),
   ("Reconciles", [
     ("Reconciles per controller", [(rate("controller_runtime_reconcile_total", "controller, result"), "{{controller}} {{result}}")], "ops"),
     ("Reconcile errors", [(rate("controller_runtime_reconcile_errors_total", "controller"), "{{controller}}")], "ops"),
     ("Reconcile latency p99", [(q("0.99", "controller_runtime_reconcile_time_seconds", "le, controller"), "{{controller}}")], "s"),
     ("Reconcile panics", [(rate("kruise_reconcile_panics_total", "instance"), "{{instance}}")], "ops")]),
   ("Work queues", [
     ("Queue depth", [("sum by (name) (workqueue_depth" + J + ")", "{{name}}")], "short"),
     ("Queue adds and retries", [(rate("workqueue_adds_total", "name"), "{{name}} adds"), (rate("workqueue_retries_total", "name"), "{{name}} retries")], "ops"),
     ("Time in queue p99", [(q("0.99", "workqueue_queue_duration_seconds", "le, name"), "{{name}}")], "s"),
     ("Work duration p99", [(q("0.99", "workqueue_work_duration_seconds", "le, name"), "{{name}}")], "s")]),
   ("API writes and throttling", [
     ("Writes by verb, resource and code", [(rate("kruise_writer_requests_total", "verb, resource, code"), "{{verb}} {{resource}} {{code}}")], "ops"),
     ("Throttle wait p99", [(q("0.99", "kruise_writer_throttle_wait_seconds", "le, instance"), "{{instance}}")], "s"),
     ("Writes waiting and in flight", [("sum by (instance) (kruise_writer_queue_depth" + J + ")", "{{instance}} waiting"), ("sum by (instance) (kruise_writer_in_flight" + J + ")", "{{instance}} in flight")], "short"),
     ("Patches coalesced", [(rate("kruise_writer_coalesced_total", "instance"), "{{instance}}")], "ops"),
     ("API requests by method and code", [(rate("rest_client_requests_total", "method, code"), "{{method}} {{code}}")], "reqps"),
     ("Bytes received by verb", [(rate("kruise_rest_client_response_bytes_total", "verb"), "{{verb}}")], "Bps")]),
   ("Watches", [
     ("Watch events received and filtered", [(rate("kruise_watch_events_received_total", "resource"), "{{resource}} received"), (rate("kruise_watch_events_filtered_total", "resource"), "{{resource}} filtered")], "ops"),
     ("Objects cached per replica", [("sum by (instance, resource) (kruise_watch_cache_objects" + J + ")", "{{instance}} {{resource}}")], "short"),
     ("Relists", [("sum by (resource) (increase(kruise_watch_relists_total" + J + R + "))", "{{resource}}")], "short"),
     ("Server-side sharded watches", [("max by (resource) (kruise_watch_server_sharded" + J + ")", "{{resource}}")], "short", "stat")]),
   ("Webhooks", [
     ("Webhook handling p99", [(q("0.99", "kruise_webhook_handling_seconds", "le, path"), "{{path}}")], "s"),
     ("Webhook requests", [(rate("kruise_webhook_handling_seconds_count", "path, allowed"), "{{path}} allowed={{allowed}}")], "reqps")])])

sidecarset = dashboard("kruise-rs-sidecarset", "kruise-rs / SidecarSet rollout",
  "SidecarSet rollouts: pods matched, updated and ready per set (from the replica coordinating each set), in-place updates, sidecar injection.",
  [("Rollout progress", [
     ("Matched and updated pods per SidecarSet", [(state("matched"), "{{sidecarset}} matched"), (state("updated"), "{{sidecarset}} updated")], "short"),
     ("Ready and updated-ready pods per SidecarSet", [(state("ready"), "{{sidecarset}} ready"), (state("updated_ready"), "{{sidecarset}} updated ready")], "short"),
     ("Rollout completion", [(state("updated_ready") + " / clamp_min(" + state("matched") + ", 1)", "{{sidecarset}}")], "percentunit"),
     ("In-place updates", [(rate("kruise_sidecarset_inplace_updates_total", "result"), "{{result}}")], "ops")]),
   ("Injection and writes", [
     ("Pod webhook p99", [(q("0.99", "kruise_webhook_handling_seconds", "le", 'path="/mutate-pod"'), "mutate-pod")], "s"),
     ("SidecarSet reconciles", [(rate("controller_runtime_reconcile_total", "controller, result", 'controller=~"sidecarset.*"'), "{{controller}} {{result}}")], "ops"),
     ("Pod and SidecarSet writes", [(rate("kruise_writer_requests_total", "verb, resource, code", 'resource=~"pods|sidecarsets|configmaps|controllerrevisions"'), "{{verb}} {{resource}} {{code}}")], "ops")])])

agents = dashboard("kruise-rs-node-agents", "kruise-rs / Node agents",
  "kruise-daemon: nodes served, probe runs and NodePodProbe status writes, image pulls and NodeImage status writes; the managers' PodProbeMarker writes.",
  [("Daemons", [
     ("Nodes served", [("sum by (instance) (kruise_daemon_nodes_served" + J + ")", "{{instance}}")], "short"),
     ("Daemon API writes", [(rate("kruise_writer_requests_total", "instance, verb, resource", 'resource=~"nodepodprobes|nodeimages|events"'), "{{instance}} {{verb}} {{resource}}")], "ops"),
     ("Daemon CPU", [(rate("process_cpu_seconds_total", "instance", 'job=~".*daemon.*"'), "{{instance}}")], "percentunit"),
     ("Daemon resident memory", [("sum by (instance) (process_resident_memory_bytes" + sel('job=~".*daemon.*"') + ")", "{{instance}}")], "bytes")]),
   ("Probes", [
     ("Probe runs by result", [(rate("kruise_daemon_probe_runs_total", "result"), "{{result}}")], "ops"),
     ("Probe workers", [("sum(kruise_daemon_probe_workers" + J + ")", "workers")], "short"),
     ("NodePodProbe status writes", [(rate("kruise_daemon_probe_status_writes_total", "result"), "{{result}}")], "ops"),
     ("PodProbeMarker writes (managers)", [(rate("kruise_podprobemarker_writes_total", "kind, result"), "{{kind}} {{result}}")], "ops")]),
   ("Image pulls", [
     ("Pulls by result", [(rate("kruise_daemon_image_pulls_total", "result"), "{{result}}")], "ops"),
     ("Pull attempts by result", [(rate("kruise_daemon_image_pull_attempts_total", "result"), "{{result}}")], "ops"),
     ("Pulling and waiting", [("sum(kruise_daemon_image_pulls_active" + J + ")", "pulling"), ("sum(kruise_daemon_image_pulls_waiting" + J + ")", "waiting")], "short"),
     ("Pull duration p50 / p90", [(q("0.5", "kruise_daemon_image_pull_duration_seconds", "le"), "p50"), (q("0.9", "kruise_daemon_image_pull_duration_seconds", "le"), "p90")], "s"),
     ("NodeImage status writes", [(rate("kruise_daemon_image_status_writes_total", "result"), "{{result}}")], "ops")])])

import sys
out = sys.argv[1]
for name, d in [("overview", overview), ("sidecarset-rollout", sidecarset), ("node-agents", agents)]:
    with open(out + "/" + name + ".json", "w") as f:
        json.dump(d, f, indent=2)
        f.write("\n")
print("ok")
