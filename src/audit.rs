//! `confera check`: audits a confdir without a backend and without
//! rendering: everything parsed and compiled, what each unit reads, and
//! what on this host would make a render fail (a missing, unwritable,
//! read-only or pseudo-filesystem destination directory, a link at `dest`,
//! a check or reload program that does not exist), plus a warning for a
//! destination directory that someone other than root or confera's user
//! can write. It never writes anything.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::sys::statfs::{self, FsType};
use nix::sys::statvfs::{fstatvfs, FsFlags};
use nix::unistd::{faccessat, AccessFlags};

use crate::config::Config;
use crate::pipeline::pinned::{self, PathError, Target};
use crate::resource::{Template, Unit};
use crate::RunStatus;

/// Filesystems whose files are the kernel's, not configuration.
const PSEUDO: &[(FsType, &str)] = &[
    (statfs::PROC_SUPER_MAGIC, "proc"),
    (statfs::SYSFS_MAGIC, "sysfs"),
    (statfs::CGROUP_SUPER_MAGIC, "cgroup"),
    (statfs::CGROUP2_SUPER_MAGIC, "cgroup2"),
    (statfs::DEBUGFS_MAGIC, "debugfs"),
    (statfs::TRACEFS_MAGIC, "tracefs"),
    (statfs::SECURITYFS_MAGIC, "securityfs"),
    (statfs::DEVPTS_SUPER_MAGIC, "devpts"),
    (statfs::BPF_FS_MAGIC, "bpf"),
    (statfs::NSFS_MAGIC, "nsfs"),
];

/// A problem found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub unit: String,
    /// Would make a render of the unit fail (else it is a warning).
    pub error: bool,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = if self.error { "error" } else { "warning" };
        write!(f, "{level}: resource {}: {}", self.unit, self.message)
    }
}

/// `confera check`: everything parsed and compiled; list what each unit
/// reads on stdout, and what this host would make fail on stderr. Exit 1
/// when anything would fail; warnings alone keep 0.
pub fn audit(config: &Config) -> RunStatus {
    for unit in &config.units {
        for t in &unit.templates {
            let keys: Vec<String> = t
                .keys
                .iter()
                .map(|k| crate::store::relative_key(&t.prefix, k))
                .collect();
            crate::cli::print_line(format_args!(
                "{}: {} -> {} (prefix {}, keys {})",
                unit.name,
                t.src,
                t.dest.display(),
                t.prefix,
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            ));
        }
    }
    let findings: Vec<Finding> = config.units.iter().flat_map(host_findings).collect();
    for finding in &findings {
        eprintln!("{finding}");
    }
    if findings.iter().any(|f| f.error) {
        RunStatus::Failed
    } else {
        RunStatus::Success
    }
}

/// What on this host would fail (or deserves a warning) for `unit`.
pub fn host_findings(unit: &Unit) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut say = |error: bool, message: String| {
        findings.push(Finding {
            unit: unit.name.clone(),
            error,
            message,
        })
    };
    let mut seen_dirs = HashSet::new();
    for t in &unit.templates {
        match Target::resolve(&t.dest, t.follow_symlink) {
            Ok(target) => {
                for (error, message) in destination_findings(t, &target, &mut seen_dirs) {
                    say(error, message);
                }
            }
            Err(e) if e.is_not_found() => say(
                true,
                format!(
                    "dest {}: directory {} does not exist (confera does not create directories)",
                    t.dest.display(),
                    pinned::parent_of(&t.dest).display()
                ),
            ),
            Err(e) => say(true, format!("dest {e}")),
        }
    }
    let commands = [
        ("check_cmd", unit.check_cmd.as_deref()),
        ("reload_cmd", unit.reload.cmd.as_deref()),
    ];
    for (field, command) in commands {
        if let Some(problem) = command.and_then(missing_program) {
            say(true, format!("{field}: {problem}"));
        }
    }
    findings
}

/// Findings about a reachable destination: once per directory, then the
/// file itself.
fn destination_findings(
    t: &Template,
    target: &Target,
    seen_dirs: &mut HashSet<(u64, u64)>,
) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let dir = target.dir.path();
    let dest = t.dest.display();
    let Ok(st) = target.dir.stat() else {
        return out;
    };
    if seen_dirs.insert((st.st_dev, st.st_ino)) {
        if let Some(kind) = pseudo_filesystem(target) {
            out.push((true, format!("dest {dest}: directory {} is on the {kind} pseudo filesystem, which holds the kernel's files, not configuration", dir.display())));
        } else if fstatvfs(target.dir.fd()).is_ok_and(|v| v.flags().contains(FsFlags::ST_RDONLY)) {
            out.push((
                true,
                format!(
                    "dest {dest}: directory {} is on a read-only filesystem",
                    dir.display()
                ),
            ));
        } else if faccessat(
            target.dir.fd(),
            ".",
            AccessFlags::W_OK | AccessFlags::X_OK,
            AtFlags::AT_EACCESS,
        )
        .is_err()
        {
            out.push((
                true,
                format!(
                    "dest {dest}: directory {} is not writable by confera's user {}",
                    dir.display(),
                    pinned::user_name(nix::unistd::geteuid().as_raw())
                ),
            ));
        }
        if let Some(who) = pinned::other_writers(&st) {
            out.push((false, format!("dest {dest}: directory {} can be written by {who}: that user can replace the file confera writes there (confera refuses links planted there, see README \"Destinations and links\")", dir.display())));
        }
    }
    match crate::pipeline::compare::read(target) {
        Ok(_) => {}
        Err(e @ (PathError::NotRegular { .. } | PathError::SymlinkAtDest { .. })) => {
            out.push((true, format!("dest {e}")))
        }
        // Unreadable here is not a render failure of its own: staging says.
        Err(_) => {}
    }
    out
}

fn pseudo_filesystem(target: &Target) -> Option<&'static str> {
    let fs = statfs::fstatfs(target.dir.fd()).ok()?;
    PSEUDO
        .iter()
        .find(|(magic, _)| *magic == fs.filesystem_type())
        .map(|(_, name)| *name)
}

/// Shell words that are not programs to look up.
const SHELL_WORDS: &[&str] = &[
    "!", "[", "[[", "{", "(", ".", ":", "alias", "builtin", "case", "cd", "command", "echo",
    "eval", "exec", "exit", "export", "false", "for", "if", "kill", "printf", "read", "return",
    "set", "source", "test", "then", "true", "type", "ulimit", "umask", "unset", "until", "wait",
    "while",
];

/// Why the program a shell command starts with cannot run, when that can be
/// told without running it: the first word (after `VAR=value` assignments)
/// of a plain command, looked up as `sh` would. Builtins, keywords and words
/// with shell syntax in them are not judged.
pub fn missing_program(command: &str) -> Option<String> {
    let word = command
        .split_whitespace()
        .find(|w| !is_assignment(w))?
        .trim_end_matches(';');
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._+-@%,".contains(c);
    if word.is_empty() || !word.chars().all(plain) || SHELL_WORDS.contains(&word) {
        return None;
    }
    if word.contains('/') {
        let path = Path::new(word);
        return match std::fs::metadata(path) {
            Err(_) => Some(format!("program {word} does not exist")),
            Ok(meta) if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 => {
                Some(format!("program {word} is not an executable file"))
            }
            Ok(_) => None,
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(word))
        .any(|p: PathBuf| is_executable(&p));
    (!found).then(|| {
        format!(
            "program `{word}` was not found in PATH ({})",
            Path::new(&path).display()
        )
    })
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_the_shell_would() {
        assert_eq!(missing_program("sh -c 'exit 0'"), None);
        assert_eq!(missing_program("FOO=1 /bin/sh -c true"), None);
        assert_eq!(missing_program("test -f {{src}}"), None, "a builtin");
        assert_eq!(missing_program("$CHECKER {{src}}"), None, "not judged");
        assert_eq!(
            missing_program("/no/such/nginx -t -c {{src}}").as_deref(),
            Some("program /no/such/nginx does not exist")
        );
        assert!(missing_program("no-such-checker-here {{src}}")
            .unwrap()
            .starts_with("program `no-such-checker-here` was not found in PATH ("));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("checker");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            missing_program(&format!("{} {{{{src}}}}", plain.display())),
            Some(format!(
                "program {} is not an executable file",
                plain.display()
            ))
        );
    }
}
