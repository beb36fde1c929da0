//! NL2Bash as packaged by the `icalfa` wheel: 300 requests in five file systems, each with a
//! setup script, a gold command and an alternative. A command passes when its output and the
//! files it leaves equal those of either gold command run on a fresh copy of the same file
//! system. The file systems' top-level directories (`/testbed`, `/system`, `/workspace`...)
//! are the writable parts of the sandbox; the working directory is `/`, as in icalfa.

use serde::Deserialize;

use super::{DataDirs, LoadedSuite};
use crate::episode::{Episode, Task};
use crate::error::TaskError;
use crate::prompt::{fenced, os_prompt};
use crate::skills::os::{OsCheck, OsTask};

#[derive(Deserialize)]
struct Raw {
    query: String,
    gold: String,
    #[serde(default)]
    gold2: Option<String>,
}

const SYSTEM_DIRS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib64", "etc", "dev", "proc", "sys", "tmp", "var", "root",
    "home", "opt", "run", "boot", "srv", "mnt", "media",
];

/// Commands whose output depends on the clock or the host (memory, disks, processes,
/// inodes): two runs of the gold command itself disagree, so output cannot score them.
const UNSTABLE: &[&str] = &[
    "date", "uptime", "vmstat", "free", "df", "lsof", "ps", "pstree", "top", "w", "who", "last",
    "getconf", "dmesg", "iostat", "mpstat", "sar", "cal", "/proc", "-ls", "stat", "-i", "inode",
    "hostname", "ifconfig", "ip", "ping", "dig", "nslookup", "host", "curl", "wget", "netstat",
    "ss", "time", "$RANDOM", "shuf", "mktemp", "openssl",
];

/// Why a gold command cannot be scored by comparing outputs, if it cannot.
pub fn unstable_reason(gold: &str) -> Option<String> {
    let squeezed = gold.split_whitespace().collect::<Vec<_>>().join(" ");
    if ["find . ", "find / ", "du . ", "du / "]
        .iter()
        .any(|p| squeezed.starts_with(p) || squeezed.contains(&format!("| {p}")))
    {
        return Some("searches the whole file system from `/`, which is the host's".into());
    }
    gold.split(|c: char| {
        c.is_whitespace() || matches!(c, '|' | ';' | '&' | '(' | ')' | '`' | '\'' | '"')
    })
    .find(|w| UNSTABLE.contains(w) || w.starts_with("/proc"))
    .map(|w| format!("output of `{w}` depends on the clock or the host"))
}

/// Top-level directories a setup script writes to (outside the system's own).
pub fn writable_roots(script: &str) -> Vec<String> {
    let mut roots: Vec<String> = Vec::new();
    for (i, _) in script.match_indices('/') {
        let before = script[..i].chars().next_back();
        if matches!(before, Some(c) if c.is_alphanumeric() || matches!(c, '.' | '_' | '/' | '<' | '~' | '$'))
        {
            continue;
        }
        let name: String = script[i + 1..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        if name.is_empty() || SYSTEM_DIRS.contains(&name.as_str()) {
            continue;
        }
        let root = format!("/{name}");
        if !roots.contains(&root) {
            roots.push(root);
        }
    }
    roots
}

/// Loads the 300 NL2Bash tasks.
pub fn load(dirs: &DataDirs) -> Result<LoadedSuite, TaskError> {
    let mut out = LoadedSuite::default();
    for fs in 1..=5 {
        let path = dirs.cache_file(&format!("nl2bash/nl2bash_fs_{fs}.json"))?;
        let setup_path = dirs.cache_file(&format!("nl2bash/setup_nl2b_fs_{fs}.sh"))?;
        let setup = super::read_to_string(&setup_path)?;
        let text = super::read_to_string(&path)?;
        let raw: Vec<Raw> = serde_json::from_str(&text)
            .map_err(|e| TaskError::data(&path, format!("expected icalfa NL2Bash tasks: {e}")))?;
        let writable = writable_roots(&setup);
        for (i, r) in raw.into_iter().enumerate() {
            if let Some(why) = unstable_reason(&r.gold) {
                out.skipped.push((format!("nl2bash/fs{fs}-{i}"), why));
                continue;
            }
            let mut gold = vec![r.gold.clone()];
            if let Some(g2) = r.gold2.filter(|g| !g.trim().is_empty() && *g != r.gold) {
                gold.push(g2);
            }
            out.episodes.push(Episode {
                id: format!("nl2bash/fs{fs}-{i}"),
                suite: "nl2bash".into(),
                prompt: os_prompt("/", &r.query),
                max_rounds: 1,
                gold: vec![fenced("bash", &r.gold)],
                task: Task::Os(OsTask {
                    writable: writable.clone(),
                    workdir: "/".into(),
                    files: Vec::new(),
                    setup_script: Some(setup.clone()),
                    check: OsCheck::GoldOutput { gold },
                }),
                family: None,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_file_system_roots() {
        let s = "rm -rf /testbed/\nmkdir -p /testbed/a\necho x > /system/b\ncat /etc/passwd\nls /usr/bin";
        assert_eq!(writable_roots(s), vec!["/testbed", "/system"]);
    }

    #[test]
    fn flags_clock_and_host_dependent_commands() {
        assert!(unstable_reason("date -R").is_some());
        assert!(unstable_reason("find /testbed -ls").is_some());
        assert!(unstable_reason("cat /proc/meminfo | head").is_some());
        assert!(unstable_reason("find /testbed -name '*.txt' | wc -l").is_none());
    }
}
