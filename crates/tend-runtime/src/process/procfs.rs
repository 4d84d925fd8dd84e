//! Reading `/proc`: process identity, process groups, usage, and the environ marker scan.
//!
//! Every reader treats "the process vanished while we looked" (ENOENT, ESRCH) as
//! `None` rather than an error: processes exit at any moment.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::OnceLock;

/// The fields of `/proc/<pid>/stat` the driver uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: R, S, D, T, t, Z, X, ...
    pub state: char,
    /// Field 5: process group id.
    pub pgrp: i32,
    /// Fields 14-17: CPU time of the process and of its waited-for children, in clock ticks.
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
    /// Field 22: start time after boot, in clock ticks.
    pub start_time: u64,
}

impl ProcStat {
    /// A zombie (or dead) process has exited; it only waits to be reaped.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the contents of `/proc/<pid>/stat`.
///
/// `comm` (field 2) may contain spaces and parentheses, so the fixed fields are
/// taken after the *last* ')'.
pub(crate) fn parse_stat(content: &str) -> Option<ProcStat> {
    let close = content.rfind(')')?;
    let rest: Vec<&str> = content.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3; field N is rest[N - 3].
    let field = |n: usize| rest.get(n - 3).copied();
    let num = |n: usize| field(n)?.parse::<u64>().ok();
    Some(ProcStat {
        state: field(3)?.chars().next()?,
        pgrp: field(5)?.parse().ok()?,
        utime: num(14)?,
        stime: num(15)?,
        // cutime/cstime are signed in the kernel's format; negative never happens in practice.
        cutime: field(16)?.parse::<i64>().ok()?.max(0) as u64,
        cstime: field(17)?.parse::<i64>().ok()?.max(0) as u64,
        start_time: num(22)?,
    })
}

/// True for the errors meaning "this process no longer exists".
fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Reads `/proc/<pid>/stat`; `None` if there is no such process.
pub(crate) fn read_stat(pid: u32) -> io::Result<Option<ProcStat>> {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => Ok(parse_stat(&s)),
        Err(e) if vanished(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `pid` is still the process that was started at `start_time`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Same process, alive; `stopped` when SIGSTOP'd.
    Alive { stopped: bool },
    /// Same process, exited but not reaped yet.
    Zombie,
    /// No process has this pid.
    Absent,
    /// The pid now belongs to another process.
    Reused,
}

/// Checks the identity of `pid` against `start_time`.
pub(crate) fn probe(pid: u32, start_time: u64) -> io::Result<Probe> {
    Ok(match read_stat(pid)? {
        None => Probe::Absent,
        Some(st) if st.start_time != start_time => Probe::Reused,
        Some(st) if st.is_dead() => Probe::Zombie,
        Some(st) => Probe::Alive {
            stopped: st.state == 'T',
        },
    })
}

/// Pids of all processes, from the numeric entries of `/proc`.
pub(crate) fn pids() -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(pid);
        }
    }
    Ok(out)
}

/// Live (non-zombie) members of process group `pgid`, with their stat.
pub(crate) fn group_members(pgid: u32) -> io::Result<Vec<(u32, ProcStat)>> {
    let mut out = Vec::new();
    for pid in pids()? {
        // A process exiting between the listing and this read is simply skipped; so is
        // an unreadable stat (never seen as root, but not worth failing a scan for).
        if let Ok(Some(st)) = read_stat(pid) {
            if i64::from(st.pgrp) == i64::from(pgid) && !st.is_dead() {
                out.push((pid, st));
            }
        }
    }
    Ok(out)
}

/// The environment a process was started with (`/proc/<pid>/environ`); `None` if gone or unreadable.
pub(crate) fn environ(pid: u32) -> Option<Vec<(String, String)>> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(parse_environ(&raw))
}

/// Splits NUL-separated `KEY=VALUE` entries; entries without '=' or not UTF-8 are dropped.
pub(crate) fn parse_environ(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Usage figures of one process from `/proc/<pid>/status` and `/proc/<pid>/fd`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcUsage {
    pub rss_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
}

/// Reads VmRSS and Threads from `/proc/<pid>/status` and counts `/proc/<pid>/fd`.
pub(crate) fn usage(pid: u32) -> Option<ProcUsage> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut usage = parse_status(&status);
    usage.open_fds = count_entries(Path::new(&format!("/proc/{pid}/fd"))).unwrap_or(0);
    Some(usage)
}

/// Extracts VmRSS (kB, reported in bytes) and Threads from a status file.
pub(crate) fn parse_status(status: &str) -> ProcUsage {
    let mut usage = ProcUsage::default();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let first = value.split_whitespace().next().and_then(|v| v.parse().ok());
        match (key, first) {
            ("VmRSS", Some(kb)) => usage.rss_bytes = u64::saturating_mul(kb, 1024),
            ("Threads", Some(n)) => usage.threads = n,
            _ => {}
        }
    }
    usage
}

fn count_entries(dir: &Path) -> io::Result<u64> {
    Ok(fs::read_dir(dir)?.count() as u64)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), for converting stat times.
pub(crate) fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as u64
        } else {
            100
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        // comm "a) (b c)" holds spaces and both parentheses; the fixed fields still parse.
        let line = "1234 (a) (b c)) T 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 -1 2 20 0 1 0 987654 1000 10 1 0 0";
        let st = parse_stat(line).expect("parses");
        assert_eq!(st.state, 'T');
        assert_eq!(st.pgrp, 1234);
        assert_eq!((st.utime, st.stime, st.cutime, st.cstime), (7, 3, 0, 2));
        assert_eq!(st.start_time, 987654);
    }

    #[test]
    fn stat_truncated_is_none() {
        assert_eq!(parse_stat("1 (x) S 0 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_identity_checked() {
        let pid = std::process::id();
        let st = read_stat(pid).expect("read").expect("exists");
        assert_eq!(
            probe(pid, st.start_time).expect("probe"),
            Probe::Alive { stopped: false }
        );
        assert_eq!(probe(pid, st.start_time + 1).expect("probe"), Probe::Reused);
        let u = usage(pid).expect("usage");
        assert!(u.rss_bytes > 0 && u.threads >= 1 && u.open_fds >= 3);
    }

    #[test]
    fn environ_parsing() {
        let env = parse_environ(b"A=1\0B=x=y\0junk\0\0");
        assert_eq!(
            env,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
    }

    #[test]
    fn status_parsing() {
        let u = parse_status("Name:\tsh\nVmRSS:\t    1234 kB\nThreads:\t3\n");
        assert_eq!(u.rss_bytes, 1234 * 1024);
        assert_eq!(u.threads, 3);
    }
}
