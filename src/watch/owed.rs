//! The reloads confera still owes: a daemon whose new configuration was
//! committed but whose reload failed (or was cut short by a shutdown). The
//! record is kept in the state directory, so a restarted confera, which
//! finds every file "unchanged", still reloads the daemon. Used by watch
//! and polling mode alike.
//!
//! It never runs a reload itself; it only remembers. A record that cannot
//! be written is logged and kept in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pipeline::ReloadKey;
use crate::resource::Unit;

/// One owed reload, by the units that wanted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    units: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    owed: Vec<Entry>,
}

#[derive(Debug)]
pub struct Owed {
    /// `None`: in memory only (`--noop`).
    path: Option<PathBuf>,
    entries: BTreeMap<Vec<String>, ReloadKey>,
    warned: bool,
}

impl Owed {
    /// The record of the confera serving `confdir`, in `state_dir`; entries
    /// whose units are no longer configured are dropped.
    pub fn load(state_dir: &Path, confdir: &Path, units: &[Unit], persist: bool) -> Owed {
        let path = persist.then(|| state_dir.join(file_name(confdir)));
        let mut owed = Owed {
            path,
            entries: BTreeMap::new(),
            warned: false,
        };
        let Some(path) = &owed.path else {
            return owed;
        };
        let file: File = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable record of owed reloads");
                File::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the record of owed reloads");
                File::default()
            }
        };
        for entry in file.owed {
            let names: Vec<String> = entry
                .units
                .into_iter()
                .filter(|n| units.iter().any(|u| &u.name == n))
                .collect();
            let key = names
                .first()
                .and_then(|n| units.iter().find(|u| &u.name == n))
                .and_then(ReloadKey::of);
            if let Some(key) = key {
                owed.entries.insert(names, key);
            }
        }
        owed
    }

    /// Every owed reload with the units that wanted it.
    pub fn all(&self) -> Vec<(ReloadKey, Vec<String>)> {
        self.entries
            .iter()
            .map(|(units, key)| (key.clone(), units.clone()))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `key`'s reload, wanted by `units`, failed or did not run.
    pub fn owe(&mut self, key: &ReloadKey, units: &[String]) {
        let mut names: Vec<String> = units.to_vec();
        // One entry per reload: merge with one already owed.
        self.entries.retain(|old_units, old_key| {
            if old_key == key {
                names.extend(old_units.iter().cloned());
                false
            } else {
                true
            }
        });
        names.sort();
        names.dedup();
        self.entries.insert(names, key.clone());
        self.save();
    }

    /// `key`'s reload happened.
    pub fn paid(&mut self, key: &ReloadKey) {
        let before = self.entries.len();
        self.entries.retain(|_, k| k != key);
        if self.entries.len() != before {
            self.save();
        }
    }

    fn save(&mut self) {
        let Some(path) = &self.path else { return };
        let file = File {
            owed: self
                .entries
                .keys()
                .map(|units| Entry {
                    units: units.clone(),
                })
                .collect(),
        };
        let result = if file.owed.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            write_atomically(path, &serde_json::to_vec_pretty(&file).unwrap_or_default())
        };
        match result {
            Ok(()) => self.warned = false,
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!(path = %path.display(), error = %e, "cannot write the record of owed reloads; a restart would forget them (set --state-dir)");
            }
            Err(_) => {}
        }
    }
}

/// One record per confdir: `/etc/confera` gives `owed-reloads-etc-confera.json`.
pub fn file_name(confdir: &Path) -> String {
    let escaped: String = confdir
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("owed-reloads-{escaped}.json")
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Reload;

    fn unit(name: &str, cmd: &str) -> Unit {
        Unit {
            name: name.into(),
            path: PathBuf::from(format!("/c/conf.d/{name}.toml")),
            templates: vec![crate::resource::Template {
                src: "t".into(),
                dest: PathBuf::from(format!("/out/{name}")),
                prefix: String::new(),
                keys: vec![],
                mode: None,
                uid: None,
                gid: None,
                secrets: Default::default(),
                allow_env: false,
                output: crate::resource::Output::Plain,
                follow_symlink: false,
            }],
            check_cmd: None,
            check_timeout: std::time::Duration::from_secs(1),
            reload: Reload {
                cmd: Some(cmd.into()),
                ..Reload::default()
            },
            wait: None,
            wait_mode: None,
            drift: Default::default(),
            bird_check: false,
            render_timeout: None,
            max_output: None,
            on_reject: None,
        }
    }

    #[test]
    fn an_owed_reload_survives_a_restart_until_it_is_paid() {
        let dir = tempfile::tempdir().unwrap();
        let units = [unit("a", "reload-x"), unit("b", "reload-x")];
        let key = ReloadKey::of(&units[0]).unwrap();
        let mut owed = Owed::load(dir.path(), Path::new("/etc/confera"), &units, true);
        owed.owe(&key, &["b".into()]);
        owed.owe(&key, &["a".into()]);
        let again = Owed::load(dir.path(), Path::new("/etc/confera"), &units, true);
        assert_eq!(again.all(), [(key.clone(), vec!["a".into(), "b".into()])]);
        assert!(dir.path().join("owed-reloads-etc-confera.json").exists());
        owed.paid(&key);
        let again = Owed::load(dir.path(), Path::new("/etc/confera"), &units, true);
        assert!(again.is_empty());
        assert!(!dir.path().join("owed-reloads-etc-confera.json").exists());
    }

    #[test]
    fn entries_of_units_no_longer_configured_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let units = [unit("a", "reload-x")];
        let mut owed = Owed::load(dir.path(), Path::new("/c"), &units, true);
        owed.owe(&ReloadKey::of(&units[0]).unwrap(), &["a".into()]);
        let again = Owed::load(dir.path(), Path::new("/c"), &[unit("z", "r")], true);
        assert!(again.is_empty());
    }
}
