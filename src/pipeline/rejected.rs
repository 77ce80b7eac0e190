//! Rejected configurations: the file sets a check or the daemon refused,
//! kept for inspection under `<state-dir>/rejected/<resource>/`, and what
//! each commit replaced, so that a configuration BIRD rejects can be rolled
//! back to the files it replaced.
//!
//! It writes only inside its own private (0700) directory of the state
//! directory and, for a rollback, through stage and commit like any commit;
//! never anywhere else.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::pipeline::commit;
use crate::pipeline::compare::{self, FileState, Fingerprint};
use crate::pipeline::pinned::Target;
use crate::pipeline::stage::Stage;
use crate::resource::OnReject;

/// How long a quoted line of a rejected file may be.
const QUOTE_MAX: usize = 160;

/// How a line of a rejected file may be quoted in a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quoting {
    /// The whole output is secret: no line is quoted.
    pub never: bool,
    /// Secret texts to redact from a quoted line (see `render::secret_texts`).
    pub secrets: Vec<String>,
}

/// One destination of a unit whose commit its daemon has not accepted yet.
#[derive(Debug, Clone)]
pub struct Member {
    pub dest: PathBuf,
    pub target: Target,
    /// What the destination held before the first commit the daemon has not
    /// accepted yet: `Some(None)` no file; `None` when those commits did
    /// not write it.
    pub previous: Option<Option<FileState>>,
    /// What the destination holds since the last commit.
    pub current: FileState,
    pub quoting: Quoting,
}

/// A unit's commits that wait for the daemon's verdict.
#[derive(Debug, Clone)]
pub struct Pending {
    pub unit: String,
    pub policy: OnReject,
    pub members: Vec<Member>,
}

impl Pending {
    fn fingerprints(&self) -> Vec<(PathBuf, Fingerprint)> {
        self.members
            .iter()
            .map(|m| (m.dest.clone(), Fingerprint::of(&m.current)))
            .collect()
    }
}

/// What a rollback did.
#[derive(Debug)]
pub enum Rollback {
    /// Every destination the commits wrote holds what it held before them
    /// again (`None`: removed again).
    Done {
        restored: Vec<(PathBuf, Option<Fingerprint>)>,
    },
    /// A later commit replaced these files already; its own reload judges it.
    Superseded,
    /// The files could not be put back; they stay as the daemon rejected them.
    Failed(String),
}

/// Shared by every pipeline of a run (cheap to clone).
#[derive(Clone, Default)]
pub struct Rejections {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `<state-dir>/rejected`; `None`: nothing is kept (`--noop`, tests).
    dir: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By unit: its commits the daemon has not accepted yet.
    pending: HashMap<String, Pending>,
    /// By unit: the file set the daemon rejected and that was rolled back;
    /// the same render is not committed again.
    refused: HashMap<String, Vec<(PathBuf, Fingerprint)>>,
}

impl Rejections {
    /// Rejected sets are kept under `<state_dir>/rejected`.
    pub fn new(state_dir: Option<&Path>) -> Rejections {
        Rejections {
            inner: Arc::new(Inner {
                dir: state_dir.map(|d| d.join("rejected")),
                state: Mutex::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where `unit`'s rejected files are kept.
    pub fn dir_of(&self, unit: &str) -> Option<PathBuf> {
        self.inner.dir.as_ref().map(|d| d.join(unit))
    }

    /// Keeps `files` (destination, content) as `unit`'s rejected set, each at
    /// its destination's path under `<state-dir>/rejected/<unit>/`, so that
    /// relative includes resolve as they would at the destinations. Replaces
    /// the unit's earlier set. Returns the directory, or `None` (logged)
    /// when it cannot be written.
    pub fn keep(&self, unit: &str, files: &[(&Path, &[u8])]) -> Option<PathBuf> {
        let dir = self.dir_of(unit)?;
        match write_set(&dir, files) {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::warn!(resource = %unit, dir = %dir.display(), error = %e, "cannot keep the rejected files for inspection (set --state-dir)");
                None
            }
        }
    }

    /// `unit` succeeded: its kept rejected set is removed and its refused
    /// render forgotten.
    pub fn clear(&self, unit: &str) {
        self.state().refused.remove(unit);
        let Some(dir) = self.dir_of(unit) else { return };
        if fs::symlink_metadata(&dir).is_err() {
            return;
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::debug!(resource = %unit, dir = %dir.display(), "removed the rejected files kept earlier")
            }
            Err(e) => {
                tracing::warn!(resource = %unit, dir = %dir.display(), error = %e, "cannot remove the rejected files kept earlier")
            }
        }
    }

    /// Whether `files` (destination, fingerprint of the render) is the set
    /// the daemon rejected last and that was rolled back.
    pub fn still_refused(&self, unit: &str, files: &[(PathBuf, Fingerprint)]) -> bool {
        self.state()
            .refused
            .get(unit)
            .is_some_and(|refused| refused == files)
    }

    /// Records a commit of `pending.unit` that its daemon has yet to accept.
    /// Commits that wait already keep the state from before the first.
    pub fn committed(&self, pending: Pending) {
        let mut state = self.state();
        let Some(waiting) = state.pending.get_mut(&pending.unit) else {
            state.pending.insert(pending.unit.clone(), pending);
            return;
        };
        waiting.policy = pending.policy;
        for new in pending.members {
            match waiting.members.iter_mut().find(|m| m.dest == new.dest) {
                Some(old) => {
                    if old.previous.is_none() {
                        old.previous = new.previous;
                    }
                    old.current = new.current;
                    old.target = new.target;
                    old.quoting = new.quoting;
                }
                None => waiting.members.push(new),
            }
        }
    }

    /// The commits of `units` that wait for a reload's verdict, as they are
    /// when the reload starts.
    pub fn pending(&self, units: &[String]) -> Vec<Pending> {
        let state = self.state();
        units
            .iter()
            .filter_map(|u| state.pending.get(u).cloned())
            .collect()
    }

    /// The daemon took the configuration: what it read is the new baseline.
    /// A unit committed again since keeps its newer commit pending, from
    /// the state the daemon accepted.
    pub fn accepted(&self, snapshot: &[Pending]) {
        let mut state = self.state();
        for seen in snapshot {
            state.refused.remove(&seen.unit);
            let Some(now) = state.pending.get_mut(&seen.unit) else {
                continue;
            };
            if now.fingerprints() == seen.fingerprints() {
                state.pending.remove(&seen.unit);
                continue;
            }
            for member in &mut now.members {
                if let Some(accepted) = seen.members.iter().find(|m| m.dest == member.dest) {
                    member.previous = Some(Some(accepted.current.clone()));
                }
            }
        }
    }

    /// The daemon rejected the configuration but keeps running the old one:
    /// puts back what `seen`'s commits replaced, through stage and commit.
    /// Only when no later commit replaced them, and only while every file
    /// still holds what was committed.
    pub fn roll_back(&self, seen: &Pending) -> Rollback {
        match self.state().pending.get(&seen.unit) {
            Some(now) if now.fingerprints() == seen.fingerprints() => {}
            _ => return Rollback::Superseded,
        }
        let mut writes = Vec::new();
        let mut removes = Vec::new();
        for m in &seen.members {
            let Some(previous) = &m.previous else {
                continue;
            };
            match compare::read(&m.target) {
                Ok(Some(state)) if state == m.current => {}
                Ok(_) => {
                    return Rollback::Failed(format!(
                        "{} changed since it was committed",
                        m.dest.display()
                    ))
                }
                Err(e) => return Rollback::Failed(e.to_string()),
            }
            match previous {
                Some(state) => writes.push((m.target.clone(), state.clone())),
                None => removes.push(m),
            }
        }
        let mut restored = Vec::new();
        let stage = match Stage::create(&seen.unit, writes, false) {
            Ok(stage) => stage,
            Err(e) => return Rollback::Failed(e.to_string()),
        };
        // No await from here on: the set is put back as a whole.
        for file in stage.files() {
            if let Err(e) = commit::commit(file) {
                return Rollback::Failed(e.to_string());
            }
            restored.push((file.dest.clone(), Some(Fingerprint::of(&file.state))));
        }
        for m in removes {
            match commit::remove(&m.target, &Fingerprint::of(&m.current)) {
                Ok(_) => restored.push((m.dest.clone(), None)),
                Err(e) => return Rollback::Failed(e.to_string()),
            }
        }
        let mut state = self.state();
        state.pending.remove(&seen.unit);
        state.refused.insert(seen.unit.clone(), seen.fingerprints());
        Rollback::Done { restored }
    }
}

/// Writes a fresh set under `dir` (0700), replacing what was there.
fn write_set(dir: &Path, files: &[(&Path, &[u8])]) -> io::Result<()> {
    let root = dir.parent().unwrap_or(dir);
    private_dir(root)?;
    // std's remove_dir_all never follows a link inside the tree.
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    private_dir(dir)?;
    for (dest, content) in files {
        let relative: PathBuf = dest
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_nofollow())
            .open(&path)?;
        file.write_all(content)?;
    }
    Ok(())
}

fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// Creates `dir` (and its parents) if needed; it must be a directory of
/// our own, not a link, and is made 0700.
fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    use std::os::unix::fs::MetadataExt;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::other(format!(
            "{} is not a directory of confera's own user",
            dir.display()
        )));
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// A file a message may name by path with `:LINE`, and the content that
/// line number refers to.
pub struct Named<'a> {
    /// The path as the message names it (a staged copy, or a destination).
    pub named: &'a Path,
    pub dest: &'a Path,
    pub content: &'a [u8],
    pub quoting: &'a Quoting,
}

/// For each `PATH:LINE` in `message` whose PATH is one of `files`: which
/// destination that content was for, and the line itself (redacted, or not
/// shown for a secret output), as `; line N of the new content for DEST:
/// "..."`. `what` says whose content it is ("new", "rejected").
pub fn line_notes(message: &str, files: &[Named], what: &str) -> String {
    let mut notes: Vec<String> = Vec::new();
    for file in files {
        let named = file.named.display().to_string();
        for (at, _) in message.match_indices(&named) {
            let rest = &message[at + named.len()..];
            let Some(rest) = rest.strip_prefix(':') else {
                continue;
            };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Ok(line) = digits.parse::<usize>() else {
                continue;
            };
            let note = format!(
                "; line {line} of the {what} content for {}: {}",
                file.dest.display(),
                quote_line(file.content, line, file.quoting)
            );
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    notes.concat()
}

fn quote_line(content: &[u8], line: usize, quoting: &Quoting) -> String {
    if quoting.never {
        return "(not shown: the resource's output is secret)".into();
    }
    let text = String::from_utf8_lossy(content);
    let Some(text) = text.lines().nth(line.saturating_sub(1)) else {
        return "(past the end of the file)".into();
    };
    let mut text = crate::render::redact_texts(text.trim(), &quoting.secrets);
    if text.chars().count() > QUOTE_MAX {
        text = text.chars().take(QUOTE_MAX).collect::<String>() + "…";
    }
    format!("{text:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(content: &str) -> FileState {
        FileState {
            content: content.as_bytes().to_vec(),
            mode: 0o640,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    /// Commits `content` to `dest` as a pipeline would, and returns the
    /// member a rollback would need.
    fn commit_file(dest: &Path, content: &str) -> Member {
        let target = Target::resolve(dest, false).unwrap();
        let previous = compare::read(&target).unwrap();
        let stage = Stage::create("u", vec![(target.clone(), state(content))], false).unwrap();
        commit::commit(&stage.files()[0]).unwrap();
        Member {
            dest: dest.to_path_buf(),
            target,
            previous: Some(previous),
            current: state(content),
            quoting: Quoting::default(),
        }
    }

    #[test]
    fn a_rollback_puts_back_replaced_files_and_removes_created_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (main, include) = (dir.path().join("bird.conf"), dir.path().join("new.conf"));
        fs::write(&main, "old main\n").unwrap();
        fs::set_permissions(&main, fs::Permissions::from_mode(0o640)).unwrap();
        let rejections = Rejections::new(None);
        // A set of two: one file replaced, one created by this commit (its
        // first render: there was no file before).
        let members = vec![
            commit_file(&main, "new main\n"),
            commit_file(&include, "new\n"),
        ];
        rejections.committed(Pending {
            unit: "u".into(),
            policy: OnReject::Rollback,
            members,
        });
        let seen = rejections.pending(&["u".to_string()]);

        let Rollback::Done { restored } = rejections.roll_back(&seen[0]) else {
            panic!("not rolled back");
        };

        assert_eq!(fs::read_to_string(&main).unwrap(), "old main\n");
        assert_eq!(
            fs::metadata(&main).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(
            !include.exists(),
            "a file the commit created is removed again"
        );
        assert_eq!(restored.len(), 2);
        assert!(rejections.still_refused("u", &seen[0].fingerprints()));
        assert!(rejections.pending(&["u".to_string()]).is_empty());
    }

    #[test]
    fn a_later_commit_is_not_rolled_back_by_an_earlier_rejection() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("bird.conf");
        fs::write(&main, "old\n").unwrap();
        let rejections = Rejections::new(None);
        let first = commit_file(&main, "first\n");
        rejections.committed(Pending {
            unit: "u".into(),
            policy: OnReject::Rollback,
            members: vec![first],
        });
        let seen = rejections.pending(&["u".to_string()]);
        let second = commit_file(&main, "second\n");
        rejections.committed(Pending {
            unit: "u".into(),
            policy: OnReject::Rollback,
            members: vec![second],
        });

        assert!(matches!(
            rejections.roll_back(&seen[0]),
            Rollback::Superseded
        ));
        assert_eq!(fs::read_to_string(&main).unwrap(), "second\n");
        // The state before both commits is what a rejection of the second restores.
        let seen = rejections.pending(&["u".to_string()]);
        assert!(matches!(
            rejections.roll_back(&seen[0]),
            Rollback::Done { .. }
        ));
        assert_eq!(fs::read_to_string(&main).unwrap(), "old\n");
    }

    #[test]
    fn notes_quote_the_line_a_checker_named_from_the_new_content() {
        let quoting = Quoting {
            never: false,
            secrets: vec!["hunter22".into()],
        };
        let files = [Named {
            named: Path::new("/e/.confera-stage-b-1-0000abcd/bird.conf"),
            dest: Path::new("/e/bird.conf"),
            content: b"router id 1.2.3.4;\npassword \"hunter22\"; x y\n",
            quoting: &quoting,
        }];
        let message = "bird: /e/.confera-stage-b-1-0000abcd/bird.conf:2:13 syntax error";
        assert_eq!(
            line_notes(message, &files, "new"),
            "; line 2 of the new content for /e/bird.conf: \"password \\\"<redacted>\\\"; x y\""
        );
        let secret = Quoting {
            never: true,
            secrets: vec![],
        };
        let files = [Named {
            quoting: &secret,
            ..files.into_iter().next().unwrap()
        }];
        assert!(line_notes(message, &files, "new")
            .ends_with("(not shown: the resource's output is secret)"));
    }
}
