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


def save(suffix, xlabel, ylabel, draw):
    """One figure: `draw(ax)` plots onto it; saved as <base>-<suffix>.png."""
    fig, ax = plt.subplots(figsize=(9, 5))
    draw(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(base + "-" + suffix + ".png", dpi=100)
    written.append(base + "-" + suffix + ".png")


def draw_series(ax):
    for s in series:
        xs, ys = zip(*s["points"])
        ax.plot(xs, ys, label=s["name"])


def draw_latencies(ax):
    for lat in latencies:
        ax.hist(lat["seconds"], bins=40, alpha=0.6, label=lat["name"])


series = [s for s in result.get("series", []) if s["points"]]
latencies = [lat for lat in result.get("latencies", []) if lat["seconds"]]
if series:
    save("progress", "seconds since the phase began", "value", draw_series)
if latencies:
    save("latency", "seconds", "count", draw_latencies)

for w in written:
    print(w)
