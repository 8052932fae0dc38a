//! Reads a process's CPU time (`/proc/PID/stat`) and memory (`/proc/PID/status`).

use std::{path::PathBuf, sync::OnceLock};

use anyhow::{Context as _, bail};

/// A process under `/proc`.
#[derive(Clone, Debug)]
pub struct Proc {
    dir: PathBuf,
}

impl Proc {
    /// The process with id `pid`.
    pub fn pid(pid: u32) -> Self {
        Self {
            dir: PathBuf::from(format!("/proc/{pid}")),
        }
    }

    /// This process (`/proc/self`).
    pub fn this() -> Self {
        Self {
            dir: PathBuf::from("/proc/self"),
        }
    }

    /// The calling thread (`/proc/thread-self`): its CPU time is that thread's alone. The
    /// path is resolved at each read, so only the thread that reads it may use the value.
    pub fn this_thread() -> Self {
        Self {
            dir: PathBuf::from("/proc/thread-self"),
        }
    }

    /// User + system CPU time so far, in seconds.
    ///
    /// # Errors
    /// The process is gone or its `stat` is unreadable.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        let path = self.dir.join("stat");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let ticks =
            parse_cpu_ticks(&text).with_context(|| format!("unexpected {}", path.display()))?;
        Ok(ticks as f64 / clock_ticks() as f64)
    }

    /// A `kB` line of `status`, e.g. `VmRSS` (resident now) or `VmHWM` (peak resident).
    ///
    /// # Errors
    /// The process is gone, or the key is missing.
    pub fn status_kib(&self, key: &str) -> anyhow::Result<u64> {
        let path = self.dir.join("status");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        parse_status_kib(&text, key).with_context(|| format!("no {key} in {}", path.display()))
    }

    /// Resident memory now, KiB.
    ///
    /// # Errors
    /// See [`Proc::status_kib`].
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS")
    }

    /// Peak resident memory, KiB.
    ///
    /// # Errors
    /// See [`Proc::status_kib`].
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmHWM")
    }

    /// Fails unless the process exists.
    ///
    /// # Errors
    /// No such process.
    pub fn check(&self) -> anyhow::Result<()> {
        if !self.dir.join("stat").exists() {
            bail!("no process at {} (wrong --pid?)", self.dir.display());
        }
        Ok(())
    }
}

/// CPU seconds the server (one or several processes) and this process use over a stretch
/// of a run.
#[derive(Debug)]
pub struct CpuMeter {
    servers: Vec<(Proc, f64)>,
    me: Proc,
    me_start: f64,
}

impl CpuMeter {
    /// Starts counting for `server` and this process.
    ///
    /// # Errors
    /// Either process's `stat` is unreadable.
    pub fn start(server: &Proc) -> anyhow::Result<Self> {
        Self::start_many(std::slice::from_ref(server))
    }

    /// Starts counting for each of `servers` (e.g. the nodes of a cluster) and this process.
    ///
    /// # Errors
    /// A process's `stat` is unreadable.
    pub fn start_many(servers: &[Proc]) -> anyhow::Result<Self> {
        let me = Proc::this();
        Ok(Self {
            servers: servers
                .iter()
                .map(|p| Ok((p.clone(), p.cpu_secs()?)))
                .collect::<anyhow::Result<_>>()?,
            me_start: me.cpu_secs()?,
            me,
        })
    }

    /// `(server, bench)` CPU seconds since the start; the server's summed over its
    /// processes.
    ///
    /// # Errors
    /// A process's `stat` is unreadable (the server exited?).
    pub fn read(&self) -> anyhow::Result<(f64, f64)> {
        let (each, me) = self.read_each()?;
        Ok((each.iter().sum(), me))
    }

    /// `(each server process, bench)` CPU seconds since the start, in the order given.
    ///
    /// # Errors
    /// A process's `stat` is unreadable (the server exited?).
    pub fn read_each(&self) -> anyhow::Result<(Vec<f64>, f64)> {
        let each = self
            .servers
            .iter()
            .map(|(p, start)| Ok(p.cpu_secs()? - start))
            .collect::<anyhow::Result<_>>()?;
        Ok((each, self.me.cpu_secs()? - self.me_start))
    }
}

/// The share of the bench's runtime that `cpu_secs` of this process's CPU over
/// `window_secs` used: `cpu / (window * worker threads)`. Near 1, the bench itself set the
/// pace, and rates and latencies describe the bench, not the server.
///
/// # Panics
/// Outside a Tokio runtime.
pub fn runtime_share(cpu_secs: f64, window_secs: f64) -> f64 {
    let workers = tokio::runtime::Handle::current()
        .metrics()
        .num_workers()
        .max(1);
    cpu_secs / window_secs.max(1e-9) / workers as f64
}

/// `utime + stime` (fields 14 and 15) in clock ticks. Fields are counted after the
/// parenthesised command name, which may itself hold spaces.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts with field 3 (state): utime is the 12th field from there.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that cannot be run).
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "1234 (tokio worker) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100 2000 300";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn parses_status_lines() {
        let status = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(1024));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(2048));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn reads_this_thread_apart_from_the_process() {
        let (me, process) = (Proc::this_thread(), Proc::this());
        let (mine, all) = (me.cpu_secs().unwrap(), process.cpu_secs().unwrap());
        // Another thread spins until its own figure shows 0.1 s (ticks are 10 ms).
        std::thread::spawn(|| {
            let spinner = Proc::this_thread();
            let start = spinner.cpu_secs().unwrap();
            let mut x = 0u64;
            while spinner.cpu_secs().unwrap() - start < 0.1 {
                for _ in 0..100_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
        })
        .join()
        .unwrap();
        assert!(process.cpu_secs().unwrap() - all >= 0.1);
        assert!(
            me.cpu_secs().unwrap() - mine < 0.05,
            "this thread only waited"
        );
    }

    #[test]
    fn reads_this_process() {
        let me = Proc::this();
        assert!(me.rss_kib().unwrap() > 0);
        assert!(me.cpu_secs().unwrap() >= 0.0);
        assert!(me.peak_rss_kib().unwrap() >= me.rss_kib().unwrap() / 2);
    }
}
