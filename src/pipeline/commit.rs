//! Commit: move staged files over their destinations atomically.
//!
//! Only commit writes a destination. Each file is already fsynced; commit
//! renames it into place through the pinned directory handles (a link that
//! appeared at the name since it was checked is replaced, never followed)
//! and fsyncs the directory. A destination that cannot be renamed over (a
//! bind-mounted file: EBUSY, another filesystem: EXDEV) is rewritten in
//! place instead, never through a link or into a file with other hard
//! links, and any error is reported, never swallowed.

use std::io::{self, Write};

use nix::fcntl::{renameat, OFlag};
use nix::sys::stat::Mode;

use crate::error::UnitError;
use crate::pipeline::compare::{self, Fingerprint};
use crate::pipeline::pinned::Target;
use crate::pipeline::stage::{set_owner_and_mode, StagedFile};

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
    let (stage_dir, name) = file.source();
    let target = &file.target;
    let method = match renameat(stage_dir, name, target.dir.fd(), target.name.as_os_str()) {
        Ok(()) => Method::Rename,
        Err(e @ (nix::errno::Errno::EBUSY | nix::errno::Errno::EXDEV)) => {
            tracing::debug!(dest = %file.dest.display(), error = %e, "rename not possible, writing in place");
            write_in_place(file)?;
            Method::InPlace
        }
        Err(e) => return Err(err(e.into())),
    };
    target.dir.sync().map_err(err)?;
    Ok(method)
}

/// Removes the file a commit created at `target`, to roll back to "no file
/// there": only while it still holds `expected` (a file someone else put
/// there since is left alone). `unlinkat` never follows a link. Returns
/// whether a file was removed.
pub fn remove(target: &Target, expected: &Fingerprint) -> Result<bool, UnitError> {
    let err = |source| UnitError::Commit {
        path: target.path.clone(),
        source,
    };
    match compare::read(target)? {
        Some(state) if Fingerprint::of(&state) == *expected => {}
        _ => return Ok(false),
    }
    nix::unistd::unlinkat(
        target.dir.fd(),
        target.name.as_os_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    )
    .map_err(|e| err(e.into()))?;
    target.dir.sync().map_err(err)?;
    Ok(true)
}

/// The fallback: truncate and rewrite the destination itself. Not atomic, so
/// only used where rename cannot work. A link or a special file at the name
/// is refused, and so is a file with other hard links, whose other names
/// (perhaps outside this directory) would change too.
fn write_in_place(file: &StagedFile) -> Result<(), UnitError> {
    let target = &file.target;
    let (mut dest, st) = target.open_regular(
        OFlag::O_WRONLY | OFlag::O_CREAT,
        Mode::from_bits_truncate(0o600),
    )?;
    let io = |source: io::Error| UnitError::Commit {
        path: file.dest.clone(),
        source,
    };
    if st.st_nlink > 1 {
        return Err(io(io::Error::other(format!(
            "it has {} hard links: refusing to rewrite it in place",
            st.st_nlink
        ))));
    }
    dest.set_len(0).map_err(io)?;
    set_owner_and_mode(&dest, &file.state).map_err(io)?;
    dest.write_all(&file.state.content).map_err(io)?;
    dest.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::compare::FileState;
    use crate::pipeline::pinned::Target;
    use crate::pipeline::stage::Stage;
    use std::fs;

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
        let target = Target::resolve(&dest, false).unwrap();
        let stage = Stage::create("x", vec![(target, state)], false).unwrap();
        assert_eq!(commit(&stage.files()[0]).unwrap(), Method::Rename);
        assert_eq!(fs::read_to_string(&dest).unwrap(), "new");
    }

    #[test]
    fn a_link_planted_after_staging_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.conf");
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let state = FileState {
            content: b"new".to_vec(),
            mode: 0o644,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let target = Target::resolve(&dest, false).unwrap();
        let stage = Stage::create("x", vec![(target, state)], false).unwrap();
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        assert_eq!(commit(&stage.files()[0]).unwrap(), Method::Rename);
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!fs::symlink_metadata(&dest).unwrap().is_symlink());
        assert_eq!(fs::read_to_string(&dest).unwrap(), "new");
    }
}
