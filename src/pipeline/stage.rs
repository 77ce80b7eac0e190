//! Stage: write rendered files into a private staging directory beside their
//! destinations, with the final mode and owner set on the file descriptor
//! from the start.
//!
//! All files of one unit are staged together, so a check of the staged main
//! file resolves relative includes to the staged includes. Stage never
//! touches a destination, and works only through the pinned handles of
//! [`pinned`]: a `.confera-stage-*` entry planted by someone else is never
//! written into or followed, only (when stale) removed. A dropped [`Stage`]
//! removes what it wrote.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::UnitError;
use crate::pipeline::compare::FileState;
use crate::pipeline::pinned::{Dir, Target};

// Other modules still name `stage::parent_of`.
pub use crate::pipeline::pinned::parent_of;

/// How deep a planted tree under a stale staging name is cleaned up.
const MAX_DEPTH: usize = 16;

/// One staged member of a unit.
#[derive(Debug)]
pub struct StagedFile {
    /// The staged copy's path, for `{{src}}` and messages.
    pub staged: PathBuf,
    /// The file a commit writes (see [`Target::path`]).
    pub dest: PathBuf,
    pub state: FileState,
    pub target: Target,
    /// The staging directory holding the copy, under the name `target.name`.
    stage_dir: Arc<OwnedFd>,
}

impl StagedFile {
    /// The staging directory's handle and the copy's name in it.
    pub fn source(&self) -> (&OwnedFd, &OsStr) {
        (&self.stage_dir, self.target.name.as_os_str())
    }
}

/// A staging directory: its handle, and its name in the pinned destination
/// directory, for removal.
#[derive(Debug)]
struct StageDir {
    parent: Dir,
    name: OsString,
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

/// The staging directories of one unit and the files in them.
#[derive(Debug)]
pub struct Stage {
    dirs: Vec<StageDir>,
    files: Vec<StagedFile>,
    keep: bool,
}

/// The name prefix of a unit's staging directories; anything with this
/// prefix in a destination directory is confera's own.
pub fn stage_prefix(unit: &str) -> String {
    format!(".confera-stage-{unit}-")
}

impl Stage {
    /// Stages `members` (resolved target, wanted state). One staging
    /// directory per destination directory, named for the unit and this
    /// process, created 0711: nobody else can list it or plant files in it,
    /// but a daemon running as another user (BIRD's `configure check`) can
    /// open the staged files, which already carry their final mode.
    pub fn create(
        unit: &str,
        members: Vec<(Target, FileState)>,
        keep: bool,
    ) -> Result<Stage, UnitError> {
        let mut stage = Stage {
            dirs: Vec::new(),
            files: Vec::with_capacity(members.len()),
            keep,
        };
        // Keyed by the directory's identity, however it was spelled.
        let mut by_dir: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        for (target, state) in members {
            let stage_err = |source| UnitError::Stage {
                path: target.dir.path().to_path_buf(),
                source,
            };
            let st = target.dir.stat().map_err(stage_err)?;
            let index = match by_dir.get(&(st.st_dev, st.st_ino)) {
                Some(&index) => index,
                None => {
                    let dir = make_stage_dir(&target.dir, unit).map_err(stage_err)?;
                    stage.dirs.push(dir);
                    by_dir.insert((st.st_dev, st.st_ino), stage.dirs.len() - 1);
                    stage.dirs.len() - 1
                }
            };
            let dir = &stage.dirs[index];
            let staged = dir.path.join(&target.name);
            write_file(&dir.fd, &target.name, &state).map_err(|source| UnitError::Stage {
                path: staged.clone(),
                source,
            })?;
            stage.files.push(StagedFile {
                staged,
                dest: target.path.clone(),
                state,
                target,
                stage_dir: dir.fd.clone(),
            });
        }
        Ok(stage)
    }

    pub fn files(&self) -> &[StagedFile] {
        &self.files
    }

    /// The staged path of the unit's first template: `{{src}}` of the check.
    pub fn first(&self) -> Option<&StagedFile> {
        self.files.first()
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for dir in &self.dirs {
            // Renamed-away files are gone already; remove whatever is left,
            // and the directory itself only if the name still holds it.
            if let Err(e) = remove_contents(&dir.fd, 0).and_then(|()| remove_if_ours(dir)) {
                tracing::warn!(dir = %dir.path.display(), error = %e, "could not remove staging directory");
            }
        }
    }
}

fn remove_if_ours(dir: &StageDir) -> io::Result<()> {
    let ours = fstat(dir.fd.as_fd())?;
    match fstatat(
        dir.parent.fd(),
        dir.name.as_os_str(),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino) => unlinkat(
            dir.parent.fd(),
            dir.name.as_os_str(),
            UnlinkatFlags::RemoveDir,
        )
        .map_err(io::Error::from),
        // Moved away by whoever owns the destination directory: it is empty
        // now, and what holds the name is not ours to remove.
        Ok(_) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates this run's staging directory in `parent` and opens it. A name
/// someone planted is skipped; a directory swapped in before it could be
/// opened is refused (it would not be ours).
fn make_stage_dir(parent: &Dir, unit: &str) -> io::Result<StageDir> {
    let parent_st = parent.stat()?;
    for _ in 0..16 {
        let name = OsString::from(format!(
            "{}{}-{:08x}",
            stage_prefix(unit),
            std::process::id(),
            rand::random::<u32>()
        ));
        match mkdirat(
            parent.fd(),
            name.as_os_str(),
            Mode::from_bits_truncate(0o711),
        ) {
            Ok(()) => {}
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
        let fd = openat(
            parent.fd(),
            name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = fstat(&fd)?;
        let path = parent.path().join(&name);
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_dev != parent_st.st_dev {
            return Err(io::Error::other(format!(
                "staging directory {} was replaced by someone else before it could be used",
                path.display()
            )));
        }
        // The umask may have narrowed the mode; set it exactly.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o711))?;
        return Ok(StageDir {
            parent: parent.clone(),
            name,
            fd: Arc::new(fd),
            path,
        });
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not pick a unique staging directory name",
    ))
}

/// Writes a new file `name` in the directory `dir` exclusively (never
/// through a link), with mode and owner set on the descriptor before any
/// content, then fsyncs it.
fn write_file(dir: &OwnedFd, name: &OsStr, state: &FileState) -> io::Result<()> {
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(state.mode & 0o600),
    )?;
    let mut file = File::from(fd);
    set_owner_and_mode(&file, state)?;
    file.write_all(&state.content)?;
    file.sync_all()
}

/// Sets owner, then the exact mode (the umask does not apply to fchmod).
pub fn set_owner_and_mode(file: &fs::File, state: &FileState) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    if meta.uid() != state.uid || meta.gid() != state.gid {
        nix::unistd::fchown(
            file,
            Some(nix::unistd::Uid::from_raw(state.uid)),
            Some(nix::unistd::Gid::from_raw(state.gid)),
        )
        .map_err(io::Error::from)?;
    }
    file.set_permissions(fs::Permissions::from_mode(state.mode))
}

/// Removes staging directories that a crashed run of this unit left in
/// `dir`. Directories of a still-running process are left alone. Whatever
/// holds such a name (a planted link, file or tree) is removed through the
/// pinned directory without following a link.
pub fn remove_stale(dir: &Path, unit: &str) -> usize {
    let prefix = stage_prefix(unit);
    let parent = match Dir::open(dir) {
        Ok(parent) => parent,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "not looking for stale staging directories");
            return 0;
        }
    };
    let Ok(names) = list(parent.fd()) else {
        return 0;
    };
    let mut removed = 0;
    for name in names {
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        // Exactly `<pid>-<8 hex digits>`: unit `bird` must not take `bird-v6`'s.
        let Some((pid, tag)) = rest.split_once('-') else {
            continue;
        };
        let hex = tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit());
        let Some(pid) = pid.parse::<i32>().ok().filter(|p| *p > 0 && hex) else {
            continue;
        };
        // Only ESRCH says the owner is gone; EPERM means it lives as another user.
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if pid != std::process::id() as i32 && !gone {
            continue;
        }
        let path = parent.path().join(&name);
        match remove_entry(parent.fd(), &name, 0) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), "removed stale staging directory");
                removed += 1;
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "could not remove stale staging directory")
            }
        }
    }
    removed
}

/// The names in a directory, but `.` and `..`.
fn list(dir: impl AsFd) -> io::Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let mut handle = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in handle.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(&name).to_os_string());
        }
    }
    Ok(names)
}

/// Removes `name` in `dir`: a link or file is unlinked (never followed), a
/// directory emptied through its own handle first.
fn remove_entry(dir: impl AsFd, name: &OsStr, depth: usize) -> io::Result<()> {
    let dir = dir.as_fd();
    let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFDIR.bits() {
        return unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from);
    }
    let sub = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    remove_contents(&sub, depth + 1)?;
    unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(io::Error::from)
}

fn remove_contents(dir: impl AsFd, depth: usize) -> io::Result<()> {
    let dir = dir.as_fd();
    if depth > MAX_DEPTH {
        return Err(io::Error::other("too deeply nested to remove"));
    }
    for name in list(dir)? {
        match remove_entry(dir, &name, depth) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn target(dest: &Path) -> Target {
        Target::resolve(dest, false).unwrap()
    }

    fn want(content: &str, mode: u32) -> FileState {
        FileState {
            content: content.as_bytes().to_vec(),
            mode,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    #[test]
    fn members_in_one_directory_share_one_private_staging_directory() {
        let dir = tempfile::tempdir().unwrap();
        let members = vec![
            (
                target(&dir.path().join("bird.conf")),
                want("include \"f.conf\";\n", 0o640),
            ),
            (
                target(&dir.path().join("f.conf")),
                want("filter f {}\n", 0o640),
            ),
        ];
        let stage = Stage::create("bird", members, false).unwrap();
        let a = &stage.files()[0].staged;
        let b = &stage.files()[1].staged;
        assert_eq!(a.parent(), b.parent());
        let stage_dir = a.parent().unwrap().to_path_buf();
        assert_eq!(fs::metadata(&stage_dir).unwrap().mode() & 0o777, 0o711);
        assert_eq!(fs::metadata(a).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(fs::read_to_string(b).unwrap(), "filter f {}\n");
        drop(stage);
        assert!(!stage_dir.exists(), "a dropped stage leaves nothing behind");
    }

    #[test]
    fn stale_staging_directories_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir
            .path()
            .join(format!("{}999999999-0000abcd", stage_prefix("bird")));
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("bird.conf"), "half").unwrap();
        let other = dir
            .path()
            .join(format!("{}999999999-0000abcd", stage_prefix("nginx")));
        fs::create_dir(&other).unwrap();
        assert_eq!(remove_stale(dir.path(), "bird"), 1);
        assert!(!stale.exists());
        assert!(
            other.exists(),
            "another unit's directory is not ours to remove"
        );
    }

    #[test]
    fn a_unit_whose_name_extends_another_keeps_its_staging_directories() {
        let dir = tempfile::tempdir().unwrap();
        let v6 = dir
            .path()
            .join(format!("{}999999999-0000abcd", stage_prefix("bird-v6")));
        fs::create_dir(&v6).unwrap();
        assert_eq!(remove_stale(dir.path(), "bird"), 0);
        assert!(v6.exists(), "bird took bird-v6's directory");
        assert_eq!(remove_stale(dir.path(), "bird-v6"), 1);
    }
}
