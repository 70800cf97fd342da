//! Resident memory of a process (and its children) from `/proc` (Linux).

use std::fs;
use std::io;

/// `VmRSS` of process `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).ok_or_else(|| io::Error::other(format!("no VmRSS line in /proc/{pid}/status")))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()
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

/// The summed `VmRSS` (KiB) of `pid` and its descendants, and how many processes that was.
///
/// Fails only if `pid` itself cannot be read; children that exit in between are skipped. Pages
/// shared between the processes are counted once per process.
pub fn tree_rss_kib(pid: u32) -> io::Result<(u64, usize)> {
    let mut total = rss_kib(pid)?;
    let mut n = 1;
    for p in process_tree(pid).into_iter().skip(1) {
        if let Ok(kib) = rss_kib(p) {
            total += kib;
            n += 1;
        }
    }
    Ok((total, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_text() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   1234 kB\nVmData: 5 kB\n"), Some(1234));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_ppid("42 (a) b) c) S 7 42 42 0"), Some(7));
    }

    #[test]
    fn reads_own_rss() {
        let me = std::process::id();
        assert!(rss_kib(me).expect("own VmRSS") > 0);
        let (kib, n) = tree_rss_kib(me).expect("own tree");
        assert!(kib > 0 && n >= 1);
    }
}
