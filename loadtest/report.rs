//! A benchmark's result as data: written as JSON (for tools and comparisons between runs) and as
//! a Markdown report, next to each other in `--out`. Figures carry the machine they came from.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

/// One table of results: columns in order, one row per configuration measured.
#[derive(Serialize, Default)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// API server requests of one phase, by verb and resource (WATCH: streams opened).
#[derive(Serialize)]
pub struct Requests {
    pub phase: String,
    pub seconds: f64,
    pub by_request: Vec<RequestCount>,
}

#[derive(Serialize)]
pub struct RequestCount {
    pub verb: String,
    pub resource: String,
    pub count: f64,
    pub server_seconds: f64,
}

/// CPU time and peak RSS of one process over the run.
#[derive(Serialize)]
pub struct Process {
    pub name: String,
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
}

/// Latencies of one kind (seconds), summarised as percentiles and drawn as a histogram.
#[derive(Serialize)]
pub struct Latencies {
    pub name: String,
    pub seconds: Vec<f64>,
}

impl Latencies {
    /// The `q` quantile (0..1).
    pub fn quantile(&self, q: f64) -> f64 {
        let mut v = self.seconds.clone();
        v.sort_by(f64::total_cmp);
        percentile(&v, q)
    }
}

/// The `q` quantile (0..1) of sorted values, nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A value over time (seconds since the phase began), e.g. progress.
#[derive(Serialize, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A phase's progress while it runs: a point in its series at most every `every` seconds (for
/// the plot), and a line on stdout at most every 10 s (for whoever watches).
pub struct Progress {
    series: Series,
    started: std::time::Instant,
    every: f64,
    last_line: std::time::Instant,
}

impl Progress {
    pub fn new(name: impl Into<String>, started: std::time::Instant, every: f64) -> Self {
        Self { series: Series { name: name.into(), points: Vec::new() }, started, every, last_line: started }
    }

    /// Records `value` now; `line(seconds)` says it when a line is due.
    pub fn record(&mut self, value: f64, line: impl FnOnce(f64) -> String) {
        let t = self.started.elapsed().as_secs_f64();
        if self.series.points.last().is_none_or(|(last, _)| t - last >= self.every) {
            self.series.points.push((t, value));
        }
        if self.last_line.elapsed() >= std::time::Duration::from_secs(10) {
            self.last_line = std::time::Instant::now();
            println!("  {t:.0} s: {}", line(t));
        }
    }

    /// The series, ending with `value` at `seconds`.
    pub fn finish(mut self, seconds: f64, value: f64) -> Series {
        self.series.points.push((seconds, value));
        self.series
    }
}

#[derive(Serialize)]
pub struct Report {
    pub scenario: String,
    pub command: String,
    pub machine: String,
    pub finished_at: String,
    pub parameters: BTreeMap<String, Value>,
    pub tables: Vec<Table>,
    pub requests: Vec<Requests>,
    pub processes: Vec<Process>,
    pub series: Vec<Series>,
    pub latencies: Vec<Latencies>,
    /// The PNG plots drawn from the series and latencies (file names next to the report).
    pub plots: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, parameters: BTreeMap<String, Value>) -> Self {
        Report {
            scenario: scenario.to_string(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine: crate::machine(),
            finished_at: String::new(),
            parameters,
            tables: Vec::new(),
            requests: Vec::new(),
            processes: Vec::new(),
            series: Vec::new(),
            latencies: Vec::new(),
            plots: Vec::new(),
        }
    }

    /// The requests of a phase from two readings of the API server's metrics.
    pub fn add_requests(
        &mut self,
        phase: &str,
        seconds: f64,
        after: &crate::ApiServerLoad,
        before: &crate::ApiServerLoad,
    ) {
        let by_request = after
            .since(before)
            .into_iter()
            .map(|(verb, resource, count, server_seconds)| RequestCount { verb, resource, count, server_seconds })
            .collect();
        self.requests.push(Requests { phase: phase.to_string(), seconds, by_request });
    }

    pub fn markdown(&self) -> String {
        let mut md = format!("# kruise-loadtest {}\n\n", self.scenario);
        md +=
            &format!("- command: `{}`\n- machine: {}\n- finished: {}\n", self.command, self.machine, self.finished_at);
        for (k, v) in &self.parameters {
            md += &format!("- {k}: {v}\n");
        }
        for t in &self.tables {
            md += &format!("\n## {}\n\n| {} |\n|{}\n", t.title, t.columns.join(" | "), "---|".repeat(t.columns.len()));
            for r in &t.rows {
                let cells: Vec<String> = r.iter().map(cell).collect();
                md += &format!("| {} |\n", cells.join(" | "));
            }
        }
        if !self.latencies.is_empty() {
            md += "\n## Latencies\n\n| what | count | p50 s | p90 s | p99 s | max s |\n|---|---|---|---|---|---|\n";
            for l in &self.latencies {
                md += &format!(
                    "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                    l.name,
                    l.seconds.len(),
                    l.quantile(0.5),
                    l.quantile(0.9),
                    l.quantile(0.99),
                    l.quantile(1.0)
                );
            }
        }
        for p in &self.plots {
            md += &format!("\n![{p}]({p})\n");
        }
        if !self.processes.is_empty() {
            md += "\n## Processes\n\n| process | CPU s | peak RSS MiB |\n|---|---|---|\n";
            for p in &self.processes {
                md += &format!("| {} | {:.1} | {:.0} |\n", p.name, p.cpu_seconds, p.peak_rss_mib);
            }
        }
        for r in &self.requests {
            let total: f64 = r.by_request.iter().filter(|c| c.verb != "WATCH").map(|c| c.count).sum();
            md += &format!(
                "\n## API server requests: {} ({total:.0} in {:.1} s, {:.0}/s; busiest first)\n\n| verb | resource | requests | per s | server s |\n|---|---|---|---|---|\n",
                r.phase,
                r.seconds,
                total / r.seconds.max(0.001)
            );
            for c in r.by_request.iter().take(12) {
                md += &format!(
                    "| {} | {} | {:.0} | {:.1} | {:.1} |\n",
                    c.verb,
                    c.resource,
                    c.count,
                    c.count / r.seconds.max(0.001),
                    c.server_seconds
                );
            }
        }
        md
    }

    /// Adds a process's CPU time and peak memory.
    pub fn add_process(&mut self, name: impl Into<String>, f: &kruise::runtime::process_metrics::ProcessFigures) {
        let peak_rss_mib = f.peak_resident_bytes / crate::MIB;
        self.processes.push(Process { name: name.into(), cpu_seconds: f.cpu_seconds, peak_rss_mib });
    }

    /// Writes the report (see [`Report::write`]) and prints it.
    pub fn finish(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.write(dir)?;
        print!("\n{}", self.markdown());
        Ok(())
    }

    /// Writes `<dir>/<scenario>.json` and `<dir>/<scenario>.md`.
    pub fn write(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.finished_at = jiff::Timestamp::now().to_string();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&json, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        self.plots = draw_plots(&json);
        let md = dir.join(format!("{}.md", self.scenario));
        std::fs::write(&md, self.markdown()).with_context(|| format!("writing {}", md.display()))?;
        println!("wrote {} and {}", json.display(), md.display());
        Ok(())
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() != 0.0 => format!("{f:.2}"),
            Some(f) if n.is_f64() => format!("{f:.0}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        // NaN serializes as null: a figure the run could not measure.
        Value::Null => "n/a".into(),
        other => other.to_string(),
    }
}

/// Runs loadtest/plot.py on the result (Debian's python3, which has python3-matplotlib); the
/// plots' file names, or none (with a note) when it cannot run.
fn draw_plots(json: &Path) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/plot.py");
    let python = ["/usr/bin/python3", "python3"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("python3");
    match std::process::Command::new(python).arg(&script).arg(json).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| Path::new(l).file_name().map(|f| f.to_string_lossy().into_owned()))
            .collect(),
        Ok(out) => {
            println!("no plots: {} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr).trim());
            Vec::new()
        }
        Err(e) => {
            println!("no plots: cannot run {python}: {e}");
            Vec::new()
        }
    }
}
