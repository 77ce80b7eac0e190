//! Reload: tell a daemon to re-read its configuration, once per distinct
//! action per batch, after every unit of the batch is committed.
//!
//! A failed reload is reported and counted; it never stops confera.

pub mod bird;
pub mod process;

use std::path::Path;

use crate::command;
use crate::error::ReloadFailure;
use crate::resource::{BirdConfigure, Reload};
use bird::Configure;

/// Runs every method that `action` names: BIRD's control socket, a signal
/// to the daemon, and `reload_cmd`, in that order. `dest` fills in
/// `{{src}}`/`{{dest}}` of the command; the owners of `daemon_files` (the
/// resources' first destinations, each with its `follow_symlink`) may run a
/// daemon found by `process_name`. Each step's success is logged once
/// per resource of `resources` (with `resource` and `resources` fields), so
/// that a log query on one resource finds its reloads.
pub async fn reload(
    action: &Reload,
    dest: &Path,
    daemon_files: &[(&Path, bool)],
    resources: &[String],
) -> Result<(), ReloadFailure> {
    let all = resources.join(",");
    let dest_field = (!dest.as_os_str().is_empty()).then(|| dest.display().to_string());
    let each = |log: &dyn Fn(&str)| {
        for name in resources {
            log(name);
        }
    };
    if let Some(socket) = &action.bird_socket {
        let what = match action.bird_configure {
            BirdConfigure::Plain => Configure::Plain,
            BirdConfigure::Soft => Configure::Soft,
            BirdConfigure::File => Configure::File(dest.to_path_buf()),
        };
        // 0003, 0004 and 0005 all mean BIRD took the configuration.
        match bird::configure(socket, &what, action.timeout).await {
            Ok(outcome) => each(
                &|name| tracing::info!(resource = %name, resources = %all, dest = dest_field, socket = %socket.display(), outcome = ?outcome, "bird reconfigured"),
            ),
            // Exec mode, no child running: the BIRD behind a dead socket is
            // the child, and it reads these files when it starts.
            Err(bird::BirdError::Connect { .. }) if crate::exec::child_is_down() => each(
                &|name| tracing::info!(resource = %name, resources = %all, dest = dest_field, socket = %socket.display(), "the exec child is not running; it reads the current files when it starts"),
            ),
            Err(e) => return Err(e.into()),
        }
    }
    if let (Some(signal), None, None) = (action.signal, &action.pid_file, &action.process_name) {
        // Exec mode: the signal is for confera's child.
        crate::exec::signal_child(signal).await?;
    } else if let Some(signal) = action.signal {
        // A process found by name may run as the owner of the daemon's file.
        let daemon_users: Vec<u32> = daemon_files
            .iter()
            .filter_map(|(file, follow)| file_owner(file, *follow))
            .collect();
        let pids = process::signal_daemon(
            action.pid_file.as_deref(),
            action.process_name.as_deref(),
            signal,
            &daemon_users,
        )?;
        let pids: Vec<i32> = pids.iter().map(|p| p.as_raw()).collect();
        each(
            &|name| tracing::info!(resource = %name, resources = %all, dest = dest_field, signal = %signal, pids = ?pids, "signalled daemon"),
        );
    }
    if let Some(cmd) = &action.cmd {
        let cmd = command::expand(cmd, dest, dest);
        command::run(&cmd, action.timeout).await?;
        each(
            &|name| tracing::info!(resource = %name, resources = %all, dest = dest_field, command = %cmd, "reload command succeeded"),
        );
    }
    Ok(())
}

/// The owner of the file at `dest`, reached as a commit reaches it (its
/// directory pinned, no link an unprivileged user could plant followed).
fn file_owner(dest: &Path, follow: bool) -> Option<u32> {
    let target = crate::pipeline::pinned::Target::resolve(dest, follow).ok()?;
    Some(target.lstat().ok()?.st_uid)
}

/// The metrics label of an action's main method.
pub fn method(action: &Reload) -> &'static str {
    if action.bird_socket.is_some() {
        "bird_socket"
    } else if action.signal.is_some() {
        "signal"
    } else {
        "command"
    }
}
