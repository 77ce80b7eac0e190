//! Stage: write rendered files into a private staging directory beside their
//! destinations, with the final mode and owner set on the file descriptor
//! from the start.
//!
//! All files of one unit are staged together, so a check of the staged main
//! file resolves relative includes to the staged includes. Stage never
//! touches a destination; a dropped [`Stage`] removes what it wrote.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::UnitError;
use crate::pipeline::compare::FileState;

/// One staged member of a unit.
#[derive(Debug)]
pub struct StagedFile {
    pub staged: PathBuf,
    pub dest: PathBuf,
    pub state: FileState,
}

/// The staging directories of one unit and the files in them.
#[derive(Debug)]
pub struct Stage {
    dirs: Vec<PathBuf>,
    files: Vec<StagedFile>,
    keep: bool,
}

/// The name prefix of a unit's staging directories; anything with this
/// prefix in a destination directory is confera's own.
pub fn stage_prefix(unit: &str) -> String {
    format!(".confera-stage-{unit}-")
}

impl Stage {
    /// Stages `members` (resolved destination, wanted state). One staging
    /// directory per destination directory, named for the unit and this
    /// process, created 0711: nobody else can list it or plant files in it,
    /// but a daemon running as another user (BIRD's `configure check`) can
    /// open the staged files, which already carry their final mode.
    pub fn create(
        unit: &str,
        members: Vec<(PathBuf, FileState)>,
        keep: bool,
    ) -> Result<Stage, UnitError> {
        let mut stage = Stage {
            dirs: Vec::new(),
            files: Vec::with_capacity(members.len()),
            keep,
        };
        let mut dirs: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        for (dest, state) in members {
            let parent = parent_of(&dest);
            let stage_dir = match dirs.get(&parent) {
                Some(dir) => dir.clone(),
                None => {
                    let dir = make_stage_dir(&parent, unit).map_err(|source| UnitError::Stage {
                        path: parent.clone(),
                        source,
                    })?;
                    stage.dirs.push(dir.clone());
                    dirs.insert(parent.clone(), dir.clone());
                    dir
                }
            };
            let name = dest.file_name().unwrap_or_default();
            let staged = stage_dir.join(name);
            write_file(&staged, &state).map_err(|source| UnitError::Stage {
                path: staged.clone(),
                source,
            })?;
            stage.files.push(StagedFile {
                staged,
                dest,
                state,
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
            // Renamed-away files are gone already; remove whatever is left.
            if let Err(e) = fs::remove_dir_all(dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove staging directory");
                }
            }
        }
    }
}

pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn make_stage_dir(parent: &Path, unit: &str) -> io::Result<PathBuf> {
    for _ in 0..16 {
        let dir = parent.join(format!(
            "{}{}-{:08x}",
            stage_prefix(unit),
            std::process::id(),
            rand::random::<u32>()
        ));
        match DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {
                // The umask may have narrowed the mode; set it exactly.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not pick a unique staging directory name",
    ))
}

/// Writes a new file exclusively, with mode and owner set on the descriptor
/// before any content, then fsyncs it.
pub fn write_file(path: &Path, state: &FileState) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(state.mode & 0o600)
        .open(path)?;
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
/// `dir`. Directories of a still-running process are left alone.
pub fn remove_stale(dir: &Path, unit: &str) -> usize {
    let prefix = stage_prefix(unit);
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
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
        if fs::remove_dir_all(entry.path()).is_ok() {
            tracing::info!(dir = %entry.path().display(), "removed stale staging directory");
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

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
                dir.path().join("bird.conf"),
                want("include \"f.conf\";\n", 0o640),
            ),
            (dir.path().join("f.conf"), want("filter f {}\n", 0o640)),
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
