//! The process's own CPU and memory, read from `/proc` when scraped: the standard `process_*`
//! series every Prometheus client library exports, so dashboards and the load tests can see each
//! replica's cost through `/metrics` alone, wherever it runs.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge};

/// CPU time and memory of one process, as `/proc/<pid>/{stat,status}` give them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessFigures {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    /// The most resident memory the process has had (`VmHWM`).
    pub peak_resident_bytes: f64,
    pub virtual_bytes: f64,
    /// When the process started, seconds after boot.
    pub started_after_boot_seconds: f64,
}

impl ProcessFigures {
    /// The figures of process `pid`, or `None` when it is gone (or this is not Linux).
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(Self::parse(&stat, &status, clock_ticks_per_second()))
    }

    /// This process's figures.
    pub fn of_self() -> Option<Self> {
        Self::of(std::process::id())
    }

    /// Parses `/proc/<pid>/stat` and `/proc/<pid>/status`; fields missing from either read as 0.
    pub fn parse(stat: &str, status: &str, ticks_per_second: f64) -> Self {
        // The command name (field 2) is in parentheses and may hold spaces and ')': the fields
        // after it start after the last ')'. There, state is index 0, so field n is index n - 3.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(0.0, |v| v * 1024.0)
        };
        let ticks = ticks_per_second.max(1.0);
        Self {
            // utime (14) + stime (15), in clock ticks.
            cpu_seconds: (field(14) + field(15)) / ticks,
            resident_bytes: kib("VmRSS"),
            peak_resident_bytes: kib("VmHWM"),
            virtual_bytes: kib("VmSize"),
            // starttime (22), in clock ticks after boot.
            started_after_boot_seconds: field(22) / ticks,
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Boot time (Unix seconds) from `/proc/stat`'s `btime` line.
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// Exports this process's figures, read afresh on every scrape:
/// `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_start_time_seconds`, `process_open_fds`, and `kruise_process_peak_resident_memory_bytes`.
#[derive(Clone)]
pub struct ProcessCollector {
    cpu: Counter,
    resident: Gauge,
    peak_resident: Gauge,
    virtual_memory: Gauge,
    start_time: Gauge,
    open_fds: Gauge,
    descs: Vec<Desc>,
}

impl ProcessCollector {
    pub fn new() -> prometheus::Result<Self> {
        let cpu = Counter::new("process_cpu_seconds_total", "User and system CPU time spent, seconds")?;
        let resident = Gauge::new("process_resident_memory_bytes", "Resident memory size in bytes")?;
        let peak_resident =
            Gauge::new("kruise_process_peak_resident_memory_bytes", "The most resident memory this process has had")?;
        let virtual_memory = Gauge::new("process_virtual_memory_bytes", "Virtual memory size in bytes")?;
        let start_time = Gauge::new("process_start_time_seconds", "Start time of the process since the Unix epoch")?;
        let open_fds = Gauge::new("process_open_fds", "Open file descriptors")?;
        let descs = [&resident, &peak_resident, &virtual_memory, &start_time, &open_fds]
            .iter()
            .flat_map(|g| g.desc().into_iter().cloned())
            .chain(cpu.desc().into_iter().cloned())
            .collect();
        Ok(Self { cpu, resident, peak_resident, virtual_memory, start_time, open_fds, descs })
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(f) = ProcessFigures::of_self() {
            // The counter only moves forward; the kernel's figure only grows.
            let delta = f.cpu_seconds - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
            self.resident.set(f.resident_bytes);
            self.peak_resident.set(f.peak_resident_bytes);
            self.virtual_memory.set(f.virtual_bytes);
            if let Some(boot) = boot_time() {
                self.start_time.set(boot + f.started_after_boot_seconds);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as f64);
        }
        [&self.resident, &self.peak_resident, &self.virtual_memory, &self.start_time, &self.open_fds]
            .iter()
            .flat_map(|g| g.collect())
            .chain(self.cpu.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (kruise manager) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 50 0 0 20 0 9 0 12345 812000000 6000 18446744073709551615 1 1 0 0 0 0 0 4096 17663 0 0 0 17 1 0 0 0 0 0";
    const STATUS: &str = "Name:\tkruise-manager\nVmPeak:\t  800000 kB\nVmSize:\t  793000 kB\nVmHWM:\t   61000 kB\nVmRSS:\t   24000 kB\nThreads:\t9\n";

    #[test]
    fn parses_cpu_memory_and_start_from_proc() {
        let f = ProcessFigures::parse(STAT, STATUS, 100.0);
        assert_eq!(f.cpu_seconds, 3.0, "utime 250 + stime 50 ticks at 100 Hz");
        assert_eq!(f.resident_bytes, 24000.0 * 1024.0);
        assert_eq!(f.peak_resident_bytes, 61000.0 * 1024.0);
        assert_eq!(f.virtual_bytes, 793000.0 * 1024.0);
        assert_eq!(f.started_after_boot_seconds, 123.45);
    }

    #[test]
    fn a_command_name_with_parentheses_does_not_shift_the_fields() {
        let stat = STAT.replace("(kruise manager)", "(a) b (c))");
        assert_eq!(ProcessFigures::parse(&stat, STATUS, 100.0).cpu_seconds, 3.0);
    }

    #[test]
    fn missing_fields_read_as_zero() {
        assert_eq!(ProcessFigures::parse("", "", 100.0), ProcessFigures::default());
    }

    #[test]
    fn the_collector_exposes_this_process_with_cpu_as_a_counter() {
        let registry = prometheus::Registry::new();
        registry.register(Box::new(ProcessCollector::new().expect("collector"))).expect("register");
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut text).expect("encode");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{name} missing in {text}"))
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("kruise_process_peak_resident_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_start_time_seconds") > 1.6e9, "a Unix time");
        assert!(value("process_open_fds") >= 3.0);
    }
}
