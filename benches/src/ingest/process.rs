//! Server processes under measurement: CPU time and memory from the kernel's own accounting.
//!
//! While a server runs, `/proc/<pid>/stat` gives its user+system CPU time; once it has exited, `wait4` gives the
//! whole life's CPU time and peak RSS (`ru_maxrss`), which includes work done at shutdown (a collector's final
//! Parquet flush), so nothing the server did for the spans escapes the figure.

use std::io;
use std::process::Child;
use std::time::{Duration, Instant};

/// A server's CPU time in seconds (user + system) so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or_else(|| io::Error::other("malformed stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let ticks = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| io::Error::other(format!("no field {} in /proc/{pid}/stat", i + 3)))
    };
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// What the kernel accounted for a process that has exited.
#[derive(Debug, Clone, Copy)]
pub struct Exited {
    /// Exited with status 0, or was killed by the SIGTERM we sent (the decode-only server's way to stop).
    pub clean: bool,
    /// The raw wait status.
    pub status: i32,
    /// User + system CPU seconds over the whole life.
    pub cpu_seconds: f64,
    /// Peak RSS in bytes.
    pub max_rss_bytes: u64,
}

/// Sends SIGTERM and reaps the process with `wait4`, giving up (SIGKILL) after `timeout`.
pub fn terminate(child: &mut Child, timeout: Duration) -> io::Result<Exited> {
    let pid = child.id() as libc::pid_t;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            let termed = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM;
            return Ok(Exited {
                clean: exited_ok || termed,
                status,
                cpu_seconds: secs(usage.ru_utime) + secs(usage.ru_stime),
                max_rss_bytes: usage.ru_maxrss as u64 * 1024,
            });
        }
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(io::Error::other(format!("pid {pid} did not exit within {timeout:?} of SIGTERM; killed")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `nproc` and the CPU model, for the report.
pub fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    (cores, model)
}

/// Sum of the sizes of files under `dir` whose name ends with `suffix`, and their paths.
pub fn files_with_suffix(dir: &std::path::Path, suffix: &str) -> io::Result<(u64, Vec<std::path::PathBuf>)> {
    let mut total = 0;
    let mut paths = Vec::new();
    if !dir.exists() {
        return Ok((0, paths));
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name().to_string_lossy().ends_with(suffix) {
                total += entry.metadata()?.len();
                paths.push(entry.path());
            }
        }
    }
    Ok((total, paths))
}
