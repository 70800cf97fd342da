//! Resident memory of a process (and its children) from `/proc` (Linux).

use std::fs;
use std::io;

/// `VmRSS` of process `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).ok_or_else(|| io::Error::other(format!("no VmRSS line in /proc/{pid}/status")))
}

/// The value of a `Key:   123 kB` line in `/proc` text.
fn parse_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    line[key.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    parse_kib(status, "VmRSS")
}

/// Proportional set size of `pid` in KiB, from `/proc/PID/smaps_rollup` (pages shared with
/// other processes count a share each, so a process tree's values add up without double
/// counting). Needs permission to read the process's maps.
pub fn pss_kib(pid: u32) -> io::Result<u64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    parse_kib(&rollup, "Pss").ok_or_else(|| io::Error::other(format!("no Pss line in /proc/{pid}/smaps_rollup")))
}

/// The parent pid from the text of `/proc/PID/stat` (the field after the parenthesised name,
/// which may itself contain spaces and parentheses).
fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and all its descendants that exist now (Dante, for one, serves from child processes).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some(pp) = fs::read_to_string(format!("/proc/{p}/stat")).ok().as_deref().and_then(parse_ppid) {
                parents.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|&&(_, pp)| pp == parent).map(|&(p, _)| p));
        i += 1;
    }
    tree
}

/// Memory of a process tree at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeMemory {
    /// Summed `VmRSS`, KiB (pages shared between the processes count once per process).
    pub rss_kib: u64,
    /// Summed PSS, KiB, if every process's `smaps_rollup` could be read.
    pub pss_kib: Option<u64>,
    /// How many processes were summed.
    pub processes: usize,
}

/// The memory of `pid` and its descendants.
///
/// Fails only if `pid` itself cannot be read; children that exit in between are skipped.
pub fn tree_memory(pid: u32) -> io::Result<TreeMemory> {
    let mut rss = rss_kib(pid)?;
    let mut pss = pss_kib(pid).ok();
    let mut processes = 1;
    for p in process_tree(pid).into_iter().skip(1) {
        if let Ok(kib) = rss_kib(p) {
            rss += kib;
            pss = pss.and_then(|total| pss_kib(p).ok().map(|k| total + k));
            processes += 1;
        }
    }
    Ok(TreeMemory { rss_kib: rss, pss_kib: pss, processes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_text() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   1234 kB\nVmData: 5 kB\n"), Some(1234));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_kib("Rss: 5 kB\nPss: 4 kB\nPss_Anon: 3 kB\n", "Pss"), Some(4));
        assert_eq!(parse_ppid("42 (a) b) c) S 7 42 42 0"), Some(7));
    }

    #[test]
    fn reads_own_rss() {
        let me = std::process::id();
        assert!(rss_kib(me).expect("own VmRSS") > 0);
        let m = tree_memory(me).expect("own tree");
        assert!(m.rss_kib > 0 && m.processes >= 1);
    }
}
