//! Where notify callbacks leave what they saw, losslessly: a flag each for
//! configuration and data files (one reload answers any number of edits)
//! and a set of changed destination paths. Callbacks never block and never
//! drop an edit; the loop is woken through one `Notify`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Default)]
pub struct Inbox {
    config: AtomicBool,
    data: AtomicBool,
    dests: Mutex<HashSet<PathBuf>>,
    wake: Notify,
}

/// What the inbox held when the loop emptied it.
#[derive(Debug, Default)]
pub struct Mail {
    pub config: bool,
    pub data: bool,
    pub dests: Vec<PathBuf>,
}

impl Inbox {
    /// A file under conf.d/ or templates/ changed.
    pub fn config(&self) {
        self.config.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// A data file of the file backend changed.
    pub fn data(&self) {
        self.data.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Something changed in a destination directory.
    pub fn dests(&self, paths: Vec<PathBuf>) {
        self.lock().extend(paths);
        self.wake.notify_one();
    }

    /// Completes once something was left (at once if something was left
    /// since the last wait: `Notify` keeps one permit).
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// Takes everything left so far.
    pub fn take(&self) -> Mail {
        let mut dests: Vec<PathBuf> = self.lock().drain().collect();
        dests.sort();
        Mail {
            config: self.config.swap(false, Ordering::AcqRel),
            data: self.data.swap(false, Ordering::AcqRel),
            dests,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        self.dests.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_dropped_however_much_arrives_before_the_loop_looks() {
        let inbox = Inbox::default();
        for i in 0..10_000 {
            inbox.dests(vec![PathBuf::from(format!("/d/{i}"))]);
        }
        inbox.data();
        inbox.wait().await;
        let mail = inbox.take();
        assert!(mail.data && !mail.config);
        assert_eq!(mail.dests.len(), 10_000);
        assert!(inbox.take().dests.is_empty());
    }
}
