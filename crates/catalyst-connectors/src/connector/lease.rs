//! Who holds a mint lease, and whether that process is still alive.
//!
//! A lease owner is `pid:boot:start:random`: the process id, this boot's id (8 hex digits of
//! `/proc/sys/kernel/random/boot_id`) and the process's start time (`/proc/<pid>/stat`), so that
//! on the same host a waiter can tell a holder that died (SIGKILL, a crash, a CLI run that
//! exited mid-refresh) from one that is minting, even if its pid was reused. Elsewhere (another
//! host, no `/proc`) a lease ends by its TTL only.

use std::sync::OnceLock;

/// This boot's id, if the system tells.
fn boot_id() -> Option<&'static str> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().replace('-', "").chars().take(8).collect())
            .filter(|s: &String| s.len() == 8)
    })
    .as_deref()
}

/// The start time (clock ticks since boot) of process `pid`, if it exists.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// A new owner name for this process.
pub(crate) fn owner_id() -> String {
    let pid = std::process::id();
    let boot = boot_id().unwrap_or("-");
    let start = start_time(pid).unwrap_or_else(|| "-".into());
    format!("{pid}:{boot}:{start}:{:016x}", rand::random::<u64>())
}

/// Whether `owner` names a process on this host that no longer runs. False when unsure.
pub(crate) fn is_dead(owner: &str) -> bool {
    let mut parts = owner.split(':');
    let (Some(pid), Some(boot), Some(start)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if start == "-" || Some(boot) != boot_id() {
        return false; // another host, or a holder that could not say when it started
    }
    start_time(pid).is_none_or(|now| now != start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_finished_one_is_dead() {
        let me = owner_id();
        assert!(!is_dead(&me), "{me}");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Read while the child is a zombie (not reaped): its /proc entry is still there.
        let start = start_time(pid);
        child.wait().unwrap();
        let finished = match (boot_id(), start) {
            (Some(boot), Some(start)) => format!("{pid}:{boot}:{start}:0"),
            // Without /proc nothing can be judged: a finished process is "not dead" (unsure).
            _ if cfg!(not(target_os = "linux")) => {
                assert!(!is_dead(&format!("{pid}:-:-:0")));
                return;
            }
            (boot, start) => panic!("Linux has /proc: boot id {boot:?}, start time {start:?}"),
        };
        assert!(is_dead(&finished), "{finished}");
        assert!(!is_dead("1:otherhost:5:0"), "another boot is never judged");
        assert!(!is_dead("garbage"));
    }
}
