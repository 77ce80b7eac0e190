//! Compare: what a destination holds now against what a render wants it to
//! hold (content, mode, owner), and the unified diff between them.
//!
//! Compare only reads, never through a link it was not told to follow, and
//! never writes a file.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use similar::TextDiff;

use crate::pipeline::pinned::{PathError, Target};

/// A destination's content and attributes, as it is or as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub content: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What drift defense remembers of a destination: a hash of its content
/// and its attributes, not the content itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    content: u64,
    len: usize,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Fingerprint {
    pub fn of(state: &FileState) -> Fingerprint {
        use std::hash::{DefaultHasher, Hash, Hasher};
        // SipHash with fixed keys: stable within the process, which is all
        // a comparison with our own last write needs.
        let mut hasher = DefaultHasher::new();
        state.content.hash(&mut hasher);
        Fingerprint {
            content: hasher.finish(),
            len: state.content.len(),
            mode: state.mode,
            uid: state.uid,
            gid: state.gid,
        }
    }

    /// How `have` (None: missing) differs from the file this fingerprints.
    pub fn difference(&self, have: Option<&Fingerprint>) -> Difference {
        match have {
            None => Difference {
                missing: true,
                ..Difference::default()
            },
            Some(have) => Difference {
                missing: false,
                content: (have.content, have.len) != (self.content, self.len),
                mode: have.mode != self.mode,
                owner: (have.uid, have.gid) != (self.uid, self.gid),
            },
        }
    }
}

/// Which parts of a destination differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Difference {
    pub missing: bool,
    pub content: bool,
    pub mode: bool,
    pub owner: bool,
}

impl Difference {
    pub fn any(&self) -> bool {
        self.missing || self.content || self.mode || self.owner
    }

    /// A short human description: "content, mode".
    pub fn describe(&self) -> String {
        if self.missing {
            return "missing".into();
        }
        let parts: Vec<&str> = [
            (self.content, "content"),
            (self.mode, "mode"),
            (self.owner, "owner"),
        ]
        .iter()
        .filter(|(d, _)| *d)
        .map(|(_, n)| *n)
        .collect();
        parts.join(", ")
    }
}

/// The file drift defense should watch for `dest`: `dest` itself, or the
/// target of a link at `dest` that root or confera's user made in a
/// directory nobody else can write (see [`Target::resolve`]).
pub fn resolve_dest(dest: &Path) -> io::Result<PathBuf> {
    Target::resolve(dest, true)
        .map(|t| t.path)
        .map_err(io::Error::other)
}

/// Reads the regular file at `target` without following a link and without
/// blocking on a named pipe; `None` when there is nothing there. A link that
/// appeared since the target was resolved is refused, never read through.
pub fn read(target: &Target) -> Result<Option<FileState>, PathError> {
    let (file, st) = match target.open_regular(OFlag::O_RDONLY, Mode::empty()) {
        Ok(opened) => opened,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut content = Vec::with_capacity(st.st_size.max(0) as usize);
    (&file)
        .read_to_end(&mut content)
        .map_err(|source| PathError::Io {
            path: target.path.clone(),
            source,
        })?;
    Ok(Some(FileState {
        content,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
    }))
}

/// The regular file confera left at `path`, for drift defense: `None` when
/// there is none, including when someone replaced it with a link (a restore
/// then refuses the link, see [`Target::resolve`]).
pub fn current(path: &Path) -> io::Result<Option<FileState>> {
    let target = match Target::resolve(path, false) {
        Ok(target) => target,
        Err(PathError::SymlinkAtDest { .. }) => return Ok(None),
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(io::Error::other(e)),
    };
    match read(&target) {
        Ok(state) => Ok(state),
        Err(PathError::SymlinkAtDest { .. } | PathError::NotRegular { .. }) => Ok(None),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// How `want` differs from `have`.
pub fn difference(have: Option<&FileState>, want: &FileState) -> Difference {
    match have {
        None => Difference {
            missing: true,
            ..Difference::default()
        },
        Some(have) => Difference {
            missing: false,
            content: have.content != want.content,
            mode: have.mode != want.mode,
            owner: have.uid != want.uid || have.gid != want.gid,
        },
    }
}

/// A unified diff from `have` to `want`, labelled with the destination path.
pub fn unified_diff(dest: &Path, have: Option<&FileState>, want: &FileState) -> String {
    let old = have
        .map(|h| String::from_utf8_lossy(&h.content).into_owned())
        .unwrap_or_default();
    let new = String::from_utf8_lossy(&want.content);
    let label_old = if have.is_some() {
        dest.display().to_string()
    } else {
        "/dev/null".to_string()
    };
    let mut out = TextDiff::from_lines(old.as_str(), new.as_ref())
        .unified_diff()
        .context_radius(3)
        .header(&label_old, &dest.display().to_string())
        .to_string();
    if let Some(have) = have {
        if have.mode != want.mode {
            out.push_str(&format!(
                "mode {}: {:04o} -> {:04o}\n",
                dest.display(),
                have.mode,
                want.mode
            ));
        }
        if (have.uid, have.gid) != (want.uid, want.gid) {
            out.push_str(&format!(
                "owner {}: {}:{} -> {}:{}\n",
                dest.display(),
                have.uid,
                have.gid,
                want.uid,
                want.gid
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(content: &str, mode: u32) -> FileState {
        FileState {
            content: content.as_bytes().to_vec(),
            mode,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn identical_files_have_no_difference() {
        let a = state("x\n", 0o644);
        assert!(!difference(Some(&a), &a).any());
    }

    #[test]
    fn content_mode_and_missing_are_told_apart() {
        let have = state("x\n", 0o644);
        assert_eq!(
            difference(Some(&have), &state("y\n", 0o644)).describe(),
            "content"
        );
        assert_eq!(
            difference(Some(&have), &state("y\n", 0o600)).describe(),
            "content, mode"
        );
        assert_eq!(difference(None, &have).describe(), "missing");
    }

    #[test]
    fn fingerprints_tell_the_same_differences_as_full_states() {
        let have = state("x\n", 0o644);
        for want in [
            state("x\n", 0o644),
            state("y\n", 0o644),
            state("x\n", 0o600),
        ] {
            assert_eq!(
                Fingerprint::of(&want).difference(Some(&Fingerprint::of(&have))),
                difference(Some(&have), &want)
            );
        }
        assert!(Fingerprint::of(&have).difference(None).missing);
    }

    #[test]
    fn diff_is_unified_and_names_the_destination() {
        let diff = unified_diff(
            Path::new("/etc/x.conf"),
            Some(&state("a\nb\n", 0o644)),
            &state("a\nc\n", 0o600),
        );
        assert!(diff.contains("--- /etc/x.conf"), "{diff}");
        assert!(diff.contains("-b\n+c\n"), "{diff}");
        assert!(diff.contains("mode /etc/x.conf: 0644 -> 0600"), "{diff}");
    }

    #[test]
    fn a_link_at_the_destination_is_never_read_through() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "x").unwrap();
        let link = dir.path().join("link.conf");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert_eq!(current(&link).unwrap(), None, "drift sees no file of ours");
        assert_eq!(current(&secret).unwrap().unwrap().content, b"x");
    }

    #[test]
    fn a_named_pipe_at_the_destination_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.conf");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let e = read(&Target::resolve(&fifo, false).unwrap()).unwrap_err();
        assert!(
            e.to_string()
                .contains("is a named pipe, not a regular file"),
            "{e}"
        );
    }
}
