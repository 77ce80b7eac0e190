//! Commit: move staged files over their destinations atomically.
//!
//! Only commit writes a destination. Each file is already fsynced; commit
//! renames it into place and fsyncs the directory. A destination that cannot
//! be renamed over (a bind-mounted file: EBUSY, another filesystem: EXDEV) is
//! rewritten in place instead, and any error is reported, never swallowed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::UnitError;
use crate::pipeline::stage::{parent_of, set_owner_and_mode, StagedFile};

/// How a file reached its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Rename,
    InPlace,
}

/// Commits one staged file.
pub fn commit(file: &StagedFile) -> Result<Method, UnitError> {
    let err = |source| UnitError::Commit {
        path: file.dest.clone(),
        source,
    };
    let method = match fs::rename(&file.staged, &file.dest) {
        Ok(()) => Method::Rename,
        Err(e) if is_busy_or_cross_device(&e) => {
            tracing::debug!(dest = %file.dest.display(), error = %e, "rename not possible, writing in place");
            write_in_place(file).map_err(err)?;
            Method::InPlace
        }
        Err(e) => return Err(err(e)),
    };
    sync_dir(&parent_of(&file.dest)).map_err(err)?;
    Ok(method)
}

fn is_busy_or_cross_device(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::libc::EBUSY || code == nix::libc::EXDEV
    )
}

/// The fallback: truncate and rewrite the destination itself. Not atomic, so
/// only used where rename cannot work.
fn write_in_place(file: &StagedFile) -> io::Result<()> {
    // The destination was resolved through symlinks already; a link that
    // appears there since must not redirect the write.
    let mut dest = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&file.dest)?;
    set_owner_and_mode(&dest, &file.state)?;
    dest.write_all(&file.state.content)?;
    dest.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::compare::FileState;
    use crate::pipeline::stage::Stage;

    #[test]
    fn a_commit_replaces_the_destination_with_the_staged_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.conf");
        fs::write(&dest, "old").unwrap();
        let state = FileState {
            content: b"new".to_vec(),
            mode: 0o644,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let stage = Stage::create("x", vec![(dest.clone(), state)], false).unwrap();
        assert_eq!(commit(&stage.files()[0]).unwrap(), Method::Rename);
        assert_eq!(fs::read_to_string(&dest).unwrap(), "new");
    }

    #[test]
    fn a_failed_commit_names_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let state = FileState {
            content: b"new".to_vec(),
            mode: 0o644,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let stage = Stage::create("x", vec![(dir.path().join("x.conf"), state)], false).unwrap();
        let mut bad = StagedFile {
            staged: stage.files()[0].staged.clone(),
            dest: dir.path().join("no/such/dir/x.conf"),
            state: stage.files()[0].state.clone(),
        };
        let e = commit(&bad).unwrap_err().to_string();
        assert!(e.contains("no/such/dir/x.conf"), "{e}");
        bad.dest = dir.path().join("x.conf");
        commit(&bad).unwrap();
    }
}
