//! PID 1 duty: reaping orphaned processes, without ever taking the exit
//! status of a process confera waits for itself.
//!
//! In a container confera may be PID 1, and every process whose parent dies
//! (a daemon a reload script left behind, a grandchild of the exec child)
//! becomes confera's child; when it exits it stays a zombie until confera
//! reaps it. A blanket `waitpid(-1)` would also reap the check and reload
//! commands and the exec child that tokio waits for (tokio waits for one pid
//! at a time, through a pidfd), and their exit statuses would be lost.
//!
//! So every process confera spawns is registered here ([`spawn`]) while a
//! lock is held, before it can possibly exit, and stays registered until
//! its waiter is done ([`Waited`]). The reaper takes the same lock, lists
//! its zombie children in /proc and reaps only those not registered, one
//! pid at a time. It never calls `waitpid(-1)` and never reaps a running
//! process.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::telemetry::metrics::Metrics;

/// Pids of the processes confera spawned and waits for itself.
static WAITED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Wakes the reaper when a registration ends: an orphan that took a pid
/// just freed by one of ours is then reaped without waiting for the next
/// SIGCHLD.
static NUDGE: Notify = Notify::const_new();

/// How often the reaper looks anyway, should a SIGCHLD have come while a
/// zombie's pid was still registered.
const BACKSTOP: Duration = Duration::from_secs(5);

fn waited() -> MutexGuard<'static, BTreeSet<u32>> {
    // A set of integers is always whole: a panic elsewhere cannot corrupt it.
    WAITED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps a spawned process's pid out of the reaper's reach until dropped.
/// Drop it only once the process has been waited for (or given up on).
#[derive(Debug)]
pub struct Waited(u32);

impl Drop for Waited {
    fn drop(&mut self) {
        waited().remove(&self.0);
        NUDGE.notify_one();
    }
}

/// Spawns `command` and registers its pid before the reaper can see it.
/// Every process confera waits for must be spawned through here.
pub fn spawn(command: &mut Command) -> std::io::Result<(Child, Waited)> {
    let mut waited = waited();
    let child = command.spawn()?;
    let pid = child
        .id()
        .expect("a child that was never polled still has its pid");
    waited.insert(pid);
    Ok((child, Waited(pid)))
}

/// Starts the reaper when this process is PID 1 (in a container or a PID
/// namespace of its own); does nothing otherwise, since orphans then go to
/// the real init. Runs until the runtime stops.
pub fn start(metrics: &Metrics) {
    if std::process::id() != 1 {
        return;
    }
    let mut chld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGCHLD; orphaned processes will not be reaped");
            return;
        }
    };
    tracing::info!("running as PID 1: reaping orphaned processes");
    let metrics = metrics.clone();
    tokio::spawn(async move {
        loop {
            let reaped = reap_orphans();
            if reaped > 0 {
                metrics.orphans_reaped(reaped);
            }
            tokio::select! {
                _ = chld.recv() => {}
                () = NUDGE.notified() => {}
                () = tokio::time::sleep(BACKSTOP) => {}
            }
        }
    });
}

/// Reaps every zombie child not registered in [`WAITED`]; returns how many.
fn reap_orphans() -> u64 {
    let waited = waited();
    let me = std::process::id() as i32;
    let Ok(all) = procfs::process::all_processes() else {
        tracing::warn!("cannot list /proc; orphaned processes are not reaped");
        return 0;
    };
    let mut reaped = 0;
    for process in all.filter_map(Result::ok) {
        let pid = process.pid();
        let Ok(stat) = process.stat() else { continue };
        if stat.ppid != me || stat.state != 'Z' || waited.contains(&(pid as u32)) {
            continue;
        }
        // Only this zombie, and only if it is still ours to reap.
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => {}
            Ok(status) => {
                reaped += 1;
                tracing::debug!(pid, status = ?status, "reaped an orphaned process");
            }
        }
    }
    reaped
}

// The reaper itself runs only as PID 1: tests/integration/exec.rs runs
// confera in a PID namespace of its own. Here it would reap other tests'
// children, which this test binary does not register.
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spawned_process_is_registered_until_its_waiter_is_done() {
        let (mut child, token) = spawn(Command::new("true").kill_on_drop(true)).unwrap();
        let pid = child.id().unwrap();
        assert!(waited().contains(&pid));
        assert!(child.wait().await.unwrap().success());
        drop(token);
        assert!(!waited().contains(&pid));
    }
}
