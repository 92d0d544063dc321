#!/usr/bin/env python3
"""Draws a kruise-loadtest result's plots next to it: `plot.py <dir>/<scenario>.json` writes
<scenario>-progress.png (each series over time) and <scenario>-latency.png (a histogram per
latency set), and prints the files written. Needs matplotlib (Debian: python3-matplotlib)."""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

path = sys.argv[1]
with open(path) as f:
    result = json.load(f)
base = os.path.splitext(path)[0]
title = "kruise-loadtest %s (%s)" % (result["scenario"], result["machine"])
written = []

series = [s for s in result.get("series", []) if s["points"]]
if series:
    fig, ax = plt.subplots(figsize=(9, 5))
    for s in series:
        xs, ys = zip(*s["points"])
        ax.plot(xs, ys, label=s["name"])
    ax.set_xlabel("seconds since the phase began")
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(base + "-progress.png", dpi=100)
    written.append(base + "-progress.png")

latencies = [l for l in result.get("latencies", []) if l["seconds"]]
if latencies:
    fig, ax = plt.subplots(figsize=(9, 5))
    for l in latencies:
        ax.hist(l["seconds"], bins=40, alpha=0.6, label=l["name"])
    ax.set_xlabel("seconds")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(base + "-latency.png", dpi=100)
    written.append(base + "-latency.png")

for w in written:
    print(w)
