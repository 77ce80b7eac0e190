//! Configuration hot reload: the watches on conf.d/, templates/ and the
//! data files, and what a SIGHUP's new settings change. Every setting is
//! either applied at once or named in a warning saying it needs a restart;
//! none is dropped silently.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};

use crate::cli::Backend;
use crate::error::ConfigError;
use crate::settings::Settings;
use crate::watch::inbox::Inbox;

/// What new settings mean for the running daemon.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SettingsChange {
    /// etcd endpoints or credentials changed: reconnect with a snapshot.
    pub reconnect: bool,
    /// The confdir changed: watch the new one and load its configuration.
    pub confdir: bool,
    /// Settings that only take effect after a restart (kept as they run).
    pub need_restart: Vec<&'static str>,
}

/// Compares running and new settings, and puts the running values back
/// into `new` for what cannot change without a restart.
pub fn compare(running: &Settings, new: &mut Settings) -> SettingsChange {
    let mut change = SettingsChange {
        reconnect: new.nodes != running.nodes
            || new.username != running.username
            || new.password != running.password
            || new.tls != running.tls,
        confdir: new.confdir != running.confdir,
        need_restart: Vec::new(),
    };
    macro_rules! restart_only {
        ($($field:ident => $name:literal),* $(,)?) => {$(
            if new.$field != running.$field {
                change.need_restart.push($name);
                new.$field = running.$field.clone();
            }
        )*};
    }
    restart_only! {
        backend => "backend",
        files => "file",
        metrics_addr => "metrics-addr",
        log_level => "log-level",
        log_format => "log-format",
        state_dir => "state-dir",
        exec => "exec",
    }
    // Watch mode with or without --interval is still watch mode; a switch
    // to polling or one-shot is not.
    if std::mem::discriminant(&new.mode) != std::mem::discriminant(&running.mode) {
        change.need_restart.push("watch/onetime mode");
        new.mode = running.mode;
    }
    change
}

/// Watches conf.d/, templates/ and, for the file backend, the data files'
/// directories. Callbacks only raise a flag in `inbox`.
pub fn watch_files(
    settings: &Settings,
    inbox: &Arc<Inbox>,
) -> Result<Vec<notify::RecommendedWatcher>, ConfigError> {
    let mut watchers = Vec::new();
    let confdir = settings.confdir.clone();
    let conf_inbox = inbox.clone();
    let mut conf_watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if is_content_event(&event) {
                    conf_inbox.config();
                }
            }
        })
        .map_err(|e| watch_error(&confdir, e))?;
    for dir in [confdir.join("conf.d"), confdir.join("templates")] {
        conf_watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|e| watch_error(&dir, e))?;
    }
    watchers.push(conf_watcher);

    if settings.backend == Backend::File {
        let files: Vec<PathBuf> = settings
            .files
            .iter()
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
            .collect();
        let names = files.clone();
        let data_inbox = inbox.clone();
        let mut data_watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(event) = res {
                    // Editors replace files by rename, so watch directories and
                    // match names; event paths are the watched (absolute)
                    // directory joined with a name.
                    if is_content_event(&event) && event.paths.iter().any(|p| names.contains(p)) {
                        data_inbox.data();
                    }
                }
            })
            .map_err(|e| watch_error(&settings.confdir, e))?;
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .map(|f| crate::pipeline::stage::parent_of(f))
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            data_watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|e| watch_error(&dir, e))?;
        }
        watchers.push(data_watcher);
    }
    Ok(watchers)
}

fn is_content_event(event: &notify::Event) -> bool {
    use notify::EventKind;
    matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
    ) && !matches!(
        event.kind,
        EventKind::Modify(notify::event::ModifyKind::Metadata(_))
    )
}

fn watch_error(path: &Path, e: notify::Error) -> ConfigError {
    let hint = match &e.kind {
        notify::ErrorKind::MaxFilesWatch => {
            ": the inotify watch limit is reached; raise fs.inotify.max_user_watches"
        }
        _ => "",
    };
    ConfigError::Settings(format!("watching {}: {e}{hint}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn settings(args: &[&str]) -> Settings {
        let mut argv = vec!["confera", "--confdir", "/nonexistent-confera-test"];
        argv.extend_from_slice(args);
        Settings::resolve(
            &Cli::try_parse_from(argv).unwrap(),
            crate::settings::FileSettings::default(),
        )
        .unwrap()
    }

    #[test]
    fn settings_that_need_a_restart_are_named_and_kept() {
        let running = settings(&["--watch", "--log-level", "info"]);
        let mut new = settings(&["--watch", "--log-level", "debug", "--backend", "env"]);
        let change = compare(&running, &mut new);
        assert_eq!(change.need_restart, ["backend", "log-level"]);
        assert_eq!(new.log_level, "info");
        assert_eq!(new.backend, running.backend);
        assert!(!change.reconnect);
    }

    #[test]
    fn an_interval_a_wait_and_endpoints_apply_without_a_restart() {
        let running = settings(&["--watch"]);
        let mut new = settings(&[
            "--watch",
            "--interval",
            "5",
            "--wait",
            "1s",
            "--node",
            "http://127.0.0.1:1",
        ]);
        let change = compare(&running, &mut new);
        assert!(change.need_restart.is_empty(), "{change:?}");
        assert!(change.reconnect);
        assert_ne!(new.mode, running.mode);
    }
}
