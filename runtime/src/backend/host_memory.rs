//! How much host memory a run may still take: the least of what the system has available
//! (`MemAvailable`), what this process's address-space limit leaves (`RLIMIT_AS`, set by
//! `ulimit -v`), and what its memory cgroup leaves (v2 `memory.max`, v1
//! `memory.limit_in_bytes`, at its own level and every level above). Past any of them an
//! allocation fails (the process aborts) or the kernel kills it, so the preflight refuses
//! the program first.

use std::path::Path;

/// Which figure bounded the free host memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The system's `MemAvailable`.
    System,
    /// This process's address-space limit (`RLIMIT_AS`).
    AddressSpace,
    /// A memory cgroup's limit.
    Cgroup,
}

impl Limit {
    /// Words for a refusal's message, after "is free".
    pub fn why(self) -> &'static str {
        match self {
            Limit::System => "",
            Limit::AddressSpace => " under this process's address-space limit (ulimit -v)",
            Limit::Cgroup => " under the memory limit of this process's cgroup",
        }
    }
}

/// Free host memory and what bounds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFree {
    pub bytes: u64,
    pub limit: Limit,
}

/// Address space each worker thread takes beyond what tc allocates: its stack (2 MiB) and
/// guard page, and room for its first allocations. (glibc's per-thread malloc arenas
/// reserve 64 MiB each, but where the limit refuses one glibc shares an existing arena.)
const PER_THREAD_RESERVE: u64 = 8 << 20;

/// The free host memory now, where any figure is known.
pub fn available() -> Option<HostFree> {
    let system = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_available(&m))
        .map(|bytes| HostFree {
            bytes,
            limit: Limit::System,
        });
    let address_space = address_space_left().map(|bytes| HostFree {
        bytes,
        limit: Limit::AddressSpace,
    });
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| cgroup_left(&c, Path::new("/sys/fs/cgroup")))
        .map(|bytes| HostFree {
            bytes,
            limit: Limit::Cgroup,
        });
    [system, address_space, cgroup]
        .into_iter()
        .flatten()
        .min_by_key(|f| f.bytes)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemAvailable:")
}

/// A `Key:   123 kB` line's value, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// What `RLIMIT_AS` leaves: the soft limit less the address space already mapped
/// (`VmSize`) and a reserve per thread the run may start; `None` when unlimited.
fn address_space_left() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer to one `rlimit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let mapped = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| kib_field(&s, "VmSize:"))
        .unwrap_or(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // `rlim_t` is u64 on Linux, not everywhere.
    #[allow(clippy::unnecessary_cast)]
    let soft = limit.rlim_cur as u64;
    Some(
        soft.saturating_sub(mapped)
            .saturating_sub(threads.saturating_mul(PER_THREAD_RESERVE)),
    )
}

/// What the memory cgroups of a process (its `/proc/self/cgroup` text) leave, with the
/// cgroup file systems mounted at `root`: at the process's cgroup and every ancestor that
/// is visible, limit less usage (less the inactive page cache, which the kernel reclaims
/// before it fails an allocation), the least of them. `None` when no level has a limit.
fn cgroup_left(proc_cgroup: &str, root: &Path) -> Option<u64> {
    let mut least: Option<u64> = None;
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (mount, files) = if id == "0" && controllers.is_empty() {
            // cgroup v2, the unified hierarchy (also at `unified/` beside v1 controllers).
            let mount = if root.join("cgroup.controllers").exists() {
                root.to_path_buf()
            } else {
                root.join("unified")
            };
            (mount, ["memory.max", "memory.current", "inactive_file"])
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                root.join("memory"),
                [
                    "memory.limit_in_bytes",
                    "memory.usage_in_bytes",
                    "total_inactive_file",
                ],
            )
        } else {
            continue;
        };
        let mut dir = mount.join(path.trim_start_matches('/'));
        loop {
            if let Some(left) = level_left(&dir, files) {
                least = Some(least.map_or(left, |l| l.min(left)));
            }
            if dir == mount || !dir.pop() || !dir.starts_with(&mount) {
                break;
            }
        }
    }
    least
}

/// One cgroup level's limit less its usage; `None` where it has no limit (or no files).
fn level_left(dir: &Path, [max_file, usage_file, inactive_key]: [&str; 3]) -> Option<u64> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let max: u64 = read(max_file)?.trim().parse().ok()?;
    // v1 writes "no limit" as the largest page-aligned i64.
    if max >= 1 << 62 {
        return None;
    }
    let usage: u64 = read(usage_file)?.trim().parse().ok()?;
    let inactive = read("memory.stat")
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(inactive_key)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0u64);
    Some(max.saturating_sub(usage.saturating_sub(inactive)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(file), text).expect("write");
    }

    #[test]
    fn mem_available_is_read_in_bytes() {
        let info = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2000 kB\n";
        assert_eq!(mem_available(info), Some(2000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn cgroup_v2_takes_the_tightest_level_less_reclaimable_cache() {
        let root = tempfile::tempdir().expect("tempdir");
        let root = root.path();
        write(root, "cgroup.controllers", "memory\n");
        // The parent allows 1 GiB with 900 MiB used, 100 MiB of it inactive cache.
        let parent = root.join("user.slice");
        write(&parent, "memory.max", "1073741824\n");
        write(&parent, "memory.current", "943718400\n");
        write(
            &parent,
            "memory.stat",
            "anon 1\ninactive_file 104857600\nactive_file 5\n",
        );
        // The process's own cgroup has no limit.
        let own = parent.join("tc.scope");
        write(&own, "memory.max", "max\n");
        write(&own, "memory.current", "4096\n");
        let left = cgroup_left("0::/user.slice/tc.scope\n", root);
        assert_eq!(left, Some(1073741824 - (943718400 - 104857600)));
        // No limit anywhere: nothing to say.
        write(&parent, "memory.max", "max\n");
        assert_eq!(cgroup_left("0::/user.slice/tc.scope\n", root), None);
    }

    #[test]
    fn cgroup_v1_reads_the_memory_controller_and_ignores_no_limit() {
        let root = tempfile::tempdir().expect("tempdir");
        let root = root.path();
        let mem = root.join("memory");
        write(&mem, "memory.limit_in_bytes", "9223372036854771712\n");
        write(&mem, "memory.usage_in_bytes", "5000\n");
        let own = mem.join("jobs/42");
        write(&own, "memory.limit_in_bytes", "2147483648\n");
        write(&own, "memory.usage_in_bytes", "1073741824\n");
        write(&own, "memory.stat", "cache 9\ntotal_inactive_file 4096\n");
        let cgroup = "9:pids:/\n4:memory:/jobs/42\n0::/\n";
        assert_eq!(
            cgroup_left(cgroup, root),
            Some(2147483648 - (1073741824 - 4096))
        );
        // A namespaced path that is not visible: the levels that are.
        assert_eq!(cgroup_left("4:memory:/elsewhere/7\n", root), None);
    }
}
