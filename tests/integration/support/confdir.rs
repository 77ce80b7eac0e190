//! A temp confdir: `conf.d/` and `templates/` under a fresh temp dir, plus any
//! other file a test needs there (data files, destinations); and copies of
//! files from the repository itself (the bundled examples).
//!
//! Writers take `&self` and return `&Self`, so a test can chain them at set-up
//! and call them again later to change the configuration under a running
//! confera. Everything is removed on Drop.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

pub struct ConfDir {
    dir: TempDir,
}

impl ConfDir {
    pub fn new() -> ConfDir {
        let dir = tempfile::Builder::new()
            .prefix("confera-confdir-")
            .tempdir()
            .expect("create a temp confdir");
        for sub in ["conf.d", "templates"] {
            std::fs::create_dir(dir.path().join(sub)).expect("create conf.d and templates");
        }
        ConfDir { dir }
    }

    /// Copies the file or directory `from` (in the repository, say) to
    /// RELPATH under the confdir, so that a test renders a copy and never
    /// touches the original.
    pub fn copy_in(&self, from: &Path, relpath: &str) -> &Self {
        let to = self.dir.path().join(relpath);
        if from.is_dir() {
            copy_tree(from, &to);
        } else {
            std::fs::copy(from, self.dest(relpath))
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        }
        self
    }

    /// Writes `templates/NAME`.
    pub fn template(&self, name: &str, text: &str) -> &Self {
        self.file(&format!("templates/{name}"), text)
    }

    /// Writes `conf.d/NAME`, adding `.toml` when NAME has no extension.
    pub fn resource(&self, name: &str, toml_text: &str) -> &Self {
        let name = if Path::new(name).extension().is_some() {
            name.to_owned()
        } else {
            format!("{name}.toml")
        };
        self.file(&format!("conf.d/{name}"), toml_text)
    }

    /// Writes RELPATH under the confdir, creating parent directories. The
    /// write is atomic (temp file + rename), so a watcher never reads half.
    pub fn file(&self, relpath: &str, text: &str) -> &Self {
        let path = self.dest(relpath);
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("rename into {}: {e}", path.display()));
        self
    }

    /// Removes RELPATH (a file).
    pub fn remove(&self, relpath: &str) -> &Self {
        let path = self.dir.path().join(relpath);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
        self
    }

    /// The confdir itself, for `--confdir`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The confdir as a `&str`, for argument lists.
    pub fn arg(&self) -> &str {
        self.dir.path().to_str().expect("temp dir paths are UTF-8")
    }

    /// Reads RELPATH; panics, naming it, when it cannot.
    #[track_caller]
    pub fn read(&self, relpath: &str) -> String {
        let path = self.dir.path().join(relpath);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// Reads RELPATH, or None when it does not exist.
    pub fn try_read(&self, relpath: &str) -> Option<String> {
        let path = self.dir.path().join(relpath);
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("read {}: {e}", path.display()),
        }
    }

    /// Runs `confera --onetime` on this confdir with the file backend
    /// reading the data file at RELPATH, plus `flags`.
    pub fn onetime_with_file(&self, relpath: &str, flags: &[&str]) -> super::cmd::Run {
        let data = self.dir.path().join(relpath);
        let mut args = vec![
            "--confdir",
            self.arg(),
            "--backend",
            "file",
            "--file",
            data.to_str().expect("temp dir paths are UTF-8"),
            "--onetime",
        ];
        args.extend_from_slice(flags);
        super::cmd::run(&args)
    }

    pub fn exists(&self, relpath: &str) -> bool {
        self.dir.path().join(relpath).exists()
    }

    /// The absolute path of RELPATH under the confdir, for a resource's
    /// `dest`; its parent directory is created.
    pub fn dest(&self, relpath: &str) -> PathBuf {
        let path = self.dir.path().join(relpath);
        let parent = path.parent().expect("a relative path under the confdir");
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        path
    }
}

/// Copies the files under `from` into `to`, creating directories.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("list {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.expect("read a directory entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
        }
    }
}

impl Default for ConfDir {
    fn default() -> Self {
        ConfDir::new()
    }
}

/// The names of confera's staging entries (`.confera-stage-*`) in DIR.
pub fn stage_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".confera-stage-"))
        .collect();
    names.sort();
    names
}

/// The repository root: the README's commands run from here.
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Copies each of `entries` (files or directories, relative to the
/// repository root) into a fresh temp dir, at the same relative paths.
pub fn copy_of_repo(entries: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("confera-example-")
        .tempdir()
        .expect("create a temp dir for the example");
    for entry in entries {
        copy_recursively(&Path::new(REPO).join(entry), &dir.path().join(entry));
    }
    dir
}

pub fn copy_recursively(from: &Path, to: &Path) {
    if from.is_dir() {
        fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
        for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("list {}: {e}", from.display())) {
            let entry = entry.expect("read a directory entry");
            copy_recursively(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
}
