//! Pinned directories: a destination's directory is opened one component at
//! a time, never through a symbolic link that a user other than root (or
//! confera's own user) could have planted, and every later step (read,
//! stage, rename, in-place write, clean-up) works relative to that handle,
//! so nothing can be swapped in between a check and a write.
//!
//! This module opens and judges; it never creates, writes or removes a file.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{Gid, Group, Uid, User};

/// The kernel's limit on links in one path lookup, kept here too.
const MAX_LINKS: u32 = 40;

/// Why a destination cannot be reached safely.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{} is a symbolic link to {}: refusing to write through it (replace the link with the file itself, or set follow_symlink = true for a link only root can change)", link.display(), target.display())]
    SymlinkAtDest { link: PathBuf, target: PathBuf },

    #[error("{} is a symbolic link to {} that {why}: refusing to follow it, since an unprivileged user could have planted it", link.display(), target.display())]
    Untrusted {
        link: PathBuf,
        target: PathBuf,
        why: String,
    },

    #[error("{}: too many levels of symbolic links", path.display())]
    Loop { path: PathBuf },

    #[error("{} is a {kind}, not a regular file: refusing to read or replace it", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },

    #[error("{} names no file", path.display())]
    NoFileName { path: PathBuf },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl PathError {
    fn io(path: &Path, errno: Errno) -> PathError {
        PathError::Io {
            path: path.to_path_buf(),
            source: io::Error::from(errno),
        }
    }

    /// Whether the error is a directory or file that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, PathError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Root and confera's own user: the owners whose links are followed.
pub fn is_trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Who other than root and confera's own user can create, rename or remove
/// entries in a directory with these attributes; `None` when nobody can.
pub fn other_writers(st: &FileStat) -> Option<String> {
    let mode = st.st_mode;
    if !is_trusted_owner(st.st_uid) {
        Some(format!("its owner {}", user_name(st.st_uid)))
    } else if mode & 0o002 != 0 {
        Some("every user".to_string())
    } else if mode & 0o020 != 0 {
        Some(format!("group {}", group_name(st.st_gid)))
    } else {
        None
    }
}

/// `bird (uid 107)`, or `uid 107` for an id without a name.
pub fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(group)) => format!("{} (gid {gid})", group.name),
        _ => format!("gid {gid}"),
    }
}

fn is_kind(st: &FileStat, kind: SFlag) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == kind.bits()
}

/// A short name for the type of a file that is not a regular one.
pub fn kind_name(st: &FileStat) -> &'static str {
    match st.st_mode & SFlag::S_IFMT.bits() {
        m if m == SFlag::S_IFDIR.bits() => "directory",
        m if m == SFlag::S_IFLNK.bits() => "symbolic link",
        m if m == SFlag::S_IFIFO.bits() => "named pipe",
        m if m == SFlag::S_IFSOCK.bits() => "socket",
        m if m == SFlag::S_IFCHR.bits() => "character device",
        m if m == SFlag::S_IFBLK.bits() => "block device",
        _ => "regular file",
    }
}

/// A directory opened through [`Dir::open`]: every step later taken in it
/// goes through this handle, wherever the path may point by then.
#[derive(Debug, Clone)]
pub struct Dir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

impl Dir {
    /// Opens `path` from `/`, one component at a time. A symbolic link on
    /// the way is followed only when root or confera's user owns it and it
    /// sits in a directory nobody else can write; anything else is refused.
    pub fn open(path: &Path) -> Result<Dir, PathError> {
        let path = std::path::absolute(path).map_err(|source| PathError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let root = open_root().map_err(|e| PathError::io(&path, e))?;
        let mut links = 0;
        let (fd, shown) = walk(root, PathBuf::from("/"), components(&path), &mut links)
            .map_err(|e| name_dir(e, &path))?;
        Dir::reopen(fd, shown, &path)
    }

    /// A path handle turned into a directory that can be listed and synced.
    fn reopen(fd: OwnedFd, shown: PathBuf, asked: &Path) -> Result<Dir, PathError> {
        let fd = openat(&fd, ".", OFlag::O_RDONLY | DIR_FLAGS, Mode::empty())
            .map_err(|e| PathError::io(asked, e))?;
        Ok(Dir {
            fd: Arc::new(fd),
            path: shown,
        })
    }

    /// The path the directory was reached by, for messages and `{{src}}`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn stat(&self) -> io::Result<FileStat> {
        fstat(self.fd()).map_err(io::Error::from)
    }

    /// Flushes the directory's entries (after a rename into it).
    pub fn sync(&self) -> io::Result<()> {
        nix::unistd::fsync(self.fd()).map_err(io::Error::from)
    }
}

/// An error while opening a destination directory names that directory,
/// unless it is about a link (which names itself).
fn name_dir(e: PathError, dir: &Path) -> PathError {
    match e {
        PathError::Io { source, .. } => PathError::Io {
            path: dir.to_path_buf(),
            source,
        },
        other => other,
    }
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn open_root() -> Result<OwnedFd, Errno> {
    nix::fcntl::open("/", OFlag::O_PATH | DIR_FLAGS, Mode::empty())
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Walks `rest` from the directory `cur` (reached as `shown`), following
/// only trusted links; returns a path handle on the last directory.
fn walk(
    mut cur: OwnedFd,
    mut shown: PathBuf,
    mut rest: VecDeque<OsString>,
    links: &mut u32,
) -> Result<(OwnedFd, PathBuf), PathError> {
    while let Some(name) = rest.pop_front() {
        match openat(
            &cur,
            name.as_os_str(),
            OFlag::O_PATH | DIR_FLAGS,
            Mode::empty(),
        ) {
            Ok(next) => {
                cur = next;
                if name == ".." {
                    shown.pop();
                } else {
                    shown.push(&name);
                }
            }
            // O_NOFOLLOW with O_DIRECTORY fails on a link with ENOTDIR or ELOOP.
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                let here = shown.join(&name);
                let st = fstatat(
                    &cur,
                    name.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| PathError::io(&here, e))?;
                if !is_kind(&st, SFlag::S_IFLNK) {
                    return Err(PathError::io(&here, Errno::ENOTDIR));
                }
                let target = PathBuf::from(
                    readlinkat(&cur, name.as_os_str()).map_err(|e| PathError::io(&here, e))?,
                );
                judge_link(&cur, &st, &here, &target)?;
                *links += 1;
                if *links > MAX_LINKS {
                    return Err(PathError::Loop { path: here });
                }
                let mut spliced = components(&target);
                if target.is_absolute() {
                    cur = open_root().map_err(|e| PathError::io(&here, e))?;
                    shown = PathBuf::from("/");
                }
                spliced.extend(rest);
                rest = spliced;
            }
            Err(e) => return Err(PathError::io(&shown.join(&name), e)),
        }
    }
    Ok((cur, shown))
}

/// A link may be followed only if no unprivileged user could have made or
/// replaced it: root or confera's user owns it, and nobody else can write
/// the directory holding it.
fn judge_link(
    dir: &OwnedFd,
    link_st: &FileStat,
    link: &Path,
    target: &Path,
) -> Result<(), PathError> {
    let untrusted = |why: String| PathError::Untrusted {
        link: link.to_path_buf(),
        target: target.to_path_buf(),
        why,
    };
    if !is_trusted_owner(link_st.st_uid) {
        return Err(untrusted(format!(
            "is owned by {}",
            user_name(link_st.st_uid)
        )));
    }
    let dir_st = fstat(dir).map_err(|e| PathError::io(link, e))?;
    if let Some(who) = other_writers(&dir_st) {
        let parent = link.parent().unwrap_or(Path::new("/"));
        return Err(untrusted(format!(
            "sits in {}, which {who} can write",
            parent.display()
        )));
    }
    Ok(())
}

/// Where a destination's file lives: a pinned directory and a name in it.
#[derive(Debug, Clone)]
pub struct Target {
    pub dir: Dir,
    pub name: OsString,
    /// The file a commit writes: `dest` itself, or with `follow_symlink`
    /// the file its (trusted) link points to.
    pub path: PathBuf,
}

impl Target {
    /// Resolves `dest`. Its directory is opened with [`Dir::open`]; a link
    /// at `dest` itself is refused unless `follow` is set, and then followed
    /// only when trusted, its target's directory reached by the same rule.
    pub fn resolve(dest: &Path, follow: bool) -> Result<Target, PathError> {
        let dest = std::path::absolute(dest).map_err(|source| PathError::Io {
            path: dest.to_path_buf(),
            source,
        })?;
        let (parent, name) = split(&dest)?;
        let mut target = Target {
            dir: Dir::open(parent)?,
            name: name.to_os_string(),
            path: dest.clone(),
        };
        let mut links = 0;
        loop {
            let st = match target.lstat() {
                Ok(st) => st,
                Err(Errno::ENOENT) => return Ok(target),
                Err(e) => return Err(PathError::io(&target.path, e)),
            };
            if !is_kind(&st, SFlag::S_IFLNK) {
                return Ok(target);
            }
            let link_target = target.read_link()?;
            if !follow {
                return Err(PathError::SymlinkAtDest {
                    link: target.path,
                    target: link_target,
                });
            }
            judge_link(&target.dir.fd, &st, &target.path, &link_target)?;
            links += 1;
            if links > MAX_LINKS {
                return Err(PathError::Loop { path: dest });
            }
            let (link_parent, link_name) = split(&link_target)?;
            let (start, shown) = if link_target.is_absolute() {
                let root = open_root().map_err(|e| PathError::io(&target.path, e))?;
                (root, PathBuf::from("/"))
            } else {
                let here = openat(
                    target.dir.fd(),
                    ".",
                    OFlag::O_PATH | DIR_FLAGS,
                    Mode::empty(),
                )
                .map_err(|e| PathError::io(&target.path, e))?;
                (here, target.dir.path.clone())
            };
            let mut steps = 0;
            let (fd, shown) = walk(start, shown, components(link_parent), &mut steps)?;
            let dir = Dir::reopen(fd, shown, link_parent)?;
            target = Target {
                path: dir.path.join(link_name),
                name: link_name.to_os_string(),
                dir,
            };
        }
    }

    /// The status of what is at this name, a link itself rather than what
    /// it points to.
    pub fn lstat(&self) -> Result<FileStat, Errno> {
        fstatat(
            self.dir.fd(),
            self.name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    }

    /// What the link at this name points to.
    pub fn read_link(&self) -> Result<PathBuf, PathError> {
        readlinkat(self.dir.fd(), self.name.as_os_str())
            .map(PathBuf::from)
            .map_err(|e| PathError::io(&self.path, e))
    }

    /// Opens the file at this name with `flags` plus `O_NOFOLLOW`: a link
    /// that appeared since [`Target::resolve`] is refused, never followed.
    pub fn open(&self, flags: OFlag, mode: Mode) -> Result<File, PathError> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        match openat(self.dir.fd(), self.name.as_os_str(), flags, mode) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::ELOOP) => Err(PathError::SymlinkAtDest {
                link: self.path.clone(),
                target: self.read_link().unwrap_or_else(|_| PathBuf::from("?")),
            }),
            Err(e) => Err(PathError::io(&self.path, e)),
        }
    }

    /// [`Target::open`] for a regular file only, never blocking on a named
    /// pipe: anything else (a pipe, a device, a directory) is refused before
    /// a byte is read or written. The file and its status.
    pub fn open_regular(&self, flags: OFlag, mode: Mode) -> Result<(File, FileStat), PathError> {
        let file = self.open(flags | OFlag::O_NONBLOCK, mode)?;
        let st = fstat(&file).map_err(|e| PathError::io(&self.path, e))?;
        if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
            return Err(PathError::NotRegular {
                path: self.path.clone(),
                kind: kind_name(&st),
            });
        }
        Ok((file, st))
    }
}

/// Splits a path into its directory and its file name.
fn split(path: &Path) -> Result<(&Path, &OsStr), PathError> {
    let no_name = || PathError::NoFileName {
        path: path.to_path_buf(),
    };
    let name = path.file_name().ok_or_else(no_name)?;
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(no_name());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

/// The directory part of a path (`.` for a bare file name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What makes two spellings of a destination the same file: the device and
/// inode of its directory plus the file name; a path when the directory does
/// not exist (yet), made absolute and with `..` taken lexically.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Entry { dev: u64, ino: u64, name: OsString },
    Path(PathBuf),
}

/// The identity of the file `dest` writes, following links as a commit
/// would (a link at `dest` itself only with `follow`). Read-only: used to
/// find two resources writing one file, whatever the spelling.
pub fn identity(dest: &Path, follow: bool) -> Identity {
    let absolute = std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf());
    let file = match follow {
        true => Target::resolve(&absolute, true).map_or(absolute.clone(), |t| t.path),
        false => absolute,
    };
    if let Ok((parent, name)) = split(&file) {
        // The kernel's view of the directory, whatever links lead to it.
        if let Ok(meta) = std::fs::metadata(parent) {
            use std::os::unix::fs::MetadataExt;
            return Identity::Entry {
                dev: meta.dev(),
                ino: meta.ino(),
                name: name.to_os_string(),
            };
        }
    }
    // No such directory (yet): compare spellings lexically.
    let mut normal = PathBuf::new();
    for c in file.components() {
        match c {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    Identity::Path(normal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_plain_destination_resolves_to_its_directory_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.conf");
        let target = Target::resolve(&dest, false).unwrap();
        assert_eq!(target.path, dest);
        assert_eq!(target.name, "a.conf");
        assert_eq!(target.dir.path(), dir.path());
    }

    #[test]
    fn a_link_at_dest_is_refused_naming_link_and_target() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("a.conf");
        symlink("/etc/hostname", &link).unwrap();
        let e = Target::resolve(&link, false).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{} is a symbolic link to /etc/hostname: refusing",
                link.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn with_follow_a_trusted_link_is_followed_to_its_target() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let link = dir.path().join("a.conf");
        symlink("real/b.conf", &link).unwrap();
        let target = Target::resolve(&link, true).unwrap();
        assert_eq!(target.path, dir.path().join("real/b.conf"));
        assert_eq!(target.name, "b.conf");
    }

    #[test]
    fn links_in_the_directory_path_owned_by_us_in_a_private_directory_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        symlink("real", dir.path().join("alias")).unwrap();
        let target = Target::resolve(&dir.path().join("alias/../alias/x.conf"), false).unwrap();
        assert_eq!(target.path, dir.path().join("alias/../alias/x.conf"));
        let real = std::fs::metadata(dir.path().join("real")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(target.dir.stat().unwrap().st_ino, real.ino());
    }

    #[test]
    fn a_link_loop_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let e = Target::resolve(&dir.path().join("a/x.conf"), false).unwrap_err();
        assert!(matches!(e, PathError::Loop { .. }), "{e}");
    }

    #[test]
    fn a_missing_directory_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir");
        let e = Target::resolve(&missing.join("a.conf"), false).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn spellings_of_one_file_have_one_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        symlink("out", dir.path().join("alias")).unwrap();
        let plain = identity(&dir.path().join("out/a.conf"), false);
        assert_eq!(plain, identity(&dir.path().join("alias/a.conf"), false));
        assert_eq!(
            plain,
            identity(&dir.path().join("out/../out/a.conf"), false)
        );
        assert_ne!(plain, identity(&dir.path().join("out/b.conf"), false));
        let missing = identity(&dir.path().join("gone/x/../a.conf"), false);
        assert_eq!(missing, identity(&dir.path().join("gone/a.conf"), false));
    }
}
