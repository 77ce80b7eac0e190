//! When each resource runs next: debounce windows for changes, retries with
//! backoff for failures, and retries of owed reloads. Pure logic over a
//! clock the caller passes in; it never sleeps, spawns or reads the time.
//!
//! A change is due by its resource's [`WaitMode`]: by default (leading) an
//! isolated change runs at once, and changes within MIN of the last run
//! are coalesced into one run after MIN of quiet (at most MAX after the
//! first of them), so a resource runs at most about once per MIN and the
//! last change always runs.
//!
//! A retry's backoff counts from the moment the failed work *finished*, so
//! a slow failing check cannot make retries run back to back. A resource
//! whose render hit its limit is parked: it is not retried until a change
//! touches it or the configuration is reloaded.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::duration::Wait;
use crate::pipeline::ReloadKey;
use crate::watch::debounce::{after, Backoff, Debouncer, WaitMode};

/// A reload that failed and is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadRetry {
    pub key: ReloadKey,
    pub units: Vec<String>,
    pub attempt: u32,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    debounce: Debouncer<String>,
    failures: HashMap<String, u32>,
    parked: HashSet<String>,
    reloads: Vec<(ReloadRetry, Instant)>,
    backoff: Backoff,
}

impl Scheduler {
    /// A change touched `unit` at `now`: due at once or after its window,
    /// by `mode` (see [`WaitMode`]). A parked unit is unparked, since its
    /// inputs changed.
    pub fn touch(&mut self, unit: &str, now: Instant, wait: Wait, mode: WaitMode) {
        self.parked.remove(unit);
        self.debounce.touch(unit.to_owned(), now, wait, mode);
    }

    /// `unit` is due at `at` at the latest, without a window (start-up,
    /// resyncs, drift restores, configuration reloads). A run already due
    /// earlier is not pushed back.
    pub fn at(&mut self, unit: &str, at: Instant) {
        self.parked.remove(unit);
        let key = unit.to_owned();
        if self.debounce.due_at(&key).is_none_or(|due| due > at) {
            self.debounce.at(key, at);
        }
    }

    /// The units due at `now`, taken out of the schedule.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        self.debounce.take_due(now)
    }

    /// The reload retries due at `now`, taken out of the schedule.
    pub fn take_due_reloads(&mut self, now: Instant) -> Vec<ReloadRetry> {
        let (due, waiting) = std::mem::take(&mut self.reloads)
            .into_iter()
            .partition(|(_, at)| *at <= now);
        self.reloads = waiting;
        due.into_iter().map(|(r, _)| r).collect()
    }

    /// The earliest moment something is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let reloads = self.reloads.iter().map(|(_, at)| *at).min();
        [self.debounce.next_deadline(), reloads]
            .into_iter()
            .flatten()
            .min()
    }

    /// `unit` succeeded; true when it had been failing.
    pub fn succeeded(&mut self, unit: &str) -> bool {
        self.failures.remove(unit).is_some()
    }

    /// `unit`'s work failed and finished at `finished`: it is retried after
    /// the backoff of its attempt, counted from then. Returns the attempt
    /// and the delay.
    pub fn failed(&mut self, unit: &str, finished: Instant) -> (u32, Duration) {
        let attempt = self.failures.entry(unit.to_owned()).or_insert(0);
        *attempt = attempt.saturating_add(1);
        let attempt = *attempt;
        let delay = self.backoff.next(attempt);
        // A change already waiting runs at its own time, no later than the retry.
        if !self.debounce.contains(&unit.to_owned()) {
            self.debounce.at(unit.to_owned(), after(finished, delay));
        }
        (attempt, delay)
    }

    /// `unit`'s render hit its limit: failed, and not retried until a
    /// change touches it.
    pub fn park(&mut self, unit: &str) {
        *self.failures.entry(unit.to_owned()).or_insert(0) += 1;
        self.parked.insert(unit.to_owned());
    }

    pub fn is_parked(&self, unit: &str) -> bool {
        self.parked.contains(unit)
    }

    /// A reload failed (or is owed from before a restart), finishing at
    /// `finished`: retried after the backoff of its attempt, from then.
    pub fn reload_failed(&mut self, retry: ReloadRetry, finished: Instant) -> Duration {
        let delay = self.backoff.next(retry.attempt.max(1));
        self.reloads.retain(|(r, _)| r.key != retry.key);
        self.reloads.push((retry, after(finished, delay)));
        delay
    }

    /// An owed reload (from before a restart) runs at `at`.
    pub fn reload_at(&mut self, retry: ReloadRetry, at: Instant) {
        self.reloads.retain(|(r, _)| r.key != retry.key);
        self.reloads.push((retry, at));
    }

    /// A reload worked: a pending retry of it is moot.
    pub fn reload_done(&mut self, key: &ReloadKey) {
        self.reloads.retain(|(r, _)| r.key != *key);
    }

    pub fn pending_reloads(&self) -> usize {
        self.reloads.len()
    }

    /// Forgets everything (a new configuration): callers schedule every unit again.
    pub fn clear(&mut self) {
        self.debounce.clear();
        self.failures.clear();
        self.parked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Reload;
    use std::path::PathBuf;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn key(cmd: &str) -> ReloadKey {
        ReloadKey {
            action: Reload {
                cmd: Some(cmd.to_owned()),
                ..Reload::default()
            },
            dest: PathBuf::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_backs_off_from_when_the_failed_work_finished() {
        let mut s = Scheduler::default();
        let started = tokio::time::Instant::now().into_std();
        s.at("a", started);
        assert_eq!(s.take_due(started), ["a"]);
        // The failing check took two seconds.
        tokio::time::advance(Duration::from_secs(2)).await;
        let finished = tokio::time::Instant::now().into_std();
        let (attempt, delay) = s.failed("a", finished);
        assert_eq!(attempt, 1);
        assert!(delay >= ms(500));
        let due = s.next_deadline().unwrap();
        assert_eq!(
            due,
            finished + delay,
            "counted from the finish, not the start"
        );
        assert!(s.take_due(finished).is_empty());
        assert_eq!(s.take_due(due), ["a"]);
        let (attempt, delay) = s.failed("a", due);
        assert_eq!(attempt, 2);
        assert!(delay >= ms(1000));
        assert!(s.succeeded("a"));
        assert!(!s.succeeded("a"));
    }

    #[test]
    fn a_run_due_earlier_is_never_pushed_back() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.at("a", t0);
        s.at("a", t0 + ms(1000));
        assert_eq!(s.next_deadline(), Some(t0));
        s.at("a", t0);
        assert_eq!(s.take_due(t0), ["a"]);
    }

    #[test]
    fn a_parked_unit_is_not_retried_until_touched() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.park("a");
        assert!(s.is_parked("a"));
        assert_eq!(s.next_deadline(), None);
        let wait = Wait {
            min: ms(10),
            max: ms(100),
        };
        s.touch("a", t0, wait, WaitMode::Trailing);
        assert!(!s.is_parked("a"));
        assert_eq!(s.take_due(t0 + ms(10)), ["a"]);
    }

    #[test]
    fn a_pending_change_is_not_pushed_back_by_a_retry() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        let wait = Wait {
            min: ms(10),
            max: ms(100),
        };
        s.touch("a", t0, wait, WaitMode::Trailing);
        s.failed("a", t0);
        assert_eq!(s.take_due(t0 + ms(10)), ["a"]);
    }

    /// The watch loop around a scheduler, on tokio's paused clock: one
    /// resource changed at each of `changes` (offsets from the start), each
    /// run taking `render`; a unit due while it runs runs again once it is
    /// done, as the loop's rerun does. Returns when each run started.
    async fn runs(
        changes: &[Duration],
        render: Duration,
        wait: Wait,
        mode: WaitMode,
    ) -> Vec<Duration> {
        let now = || tokio::time::Instant::now().into_std();
        let t0 = now();
        let mut s = Scheduler::default();
        let (mut started, mut busy_until, mut rerun) = (Vec::new(), None::<Instant>, false);
        let mut next = 0;
        for _ in 0..100_000 {
            let t = now();
            if busy_until.is_some_and(|end| end <= t) {
                busy_until = None;
                if std::mem::take(&mut rerun) {
                    s.at("r", t);
                }
            }
            while changes.get(next).is_some_and(|c| t0 + *c <= t) {
                s.touch("r", t, wait, mode);
                next += 1;
            }
            for _ in s.take_due(t) {
                if busy_until.is_some() {
                    rerun = true;
                } else {
                    started.push(t - t0);
                    busy_until = Some(t + render);
                }
            }
            let wake = [
                s.next_deadline(),
                busy_until,
                changes.get(next).map(|c| t0 + *c),
            ];
            match wake.into_iter().flatten().min() {
                Some(at) => tokio::time::advance(at.saturating_duration_since(t)).await,
                None => return started,
            }
        }
        panic!("the simulated loop never settled");
    }

    /// `n` changes spread evenly over `span`, the first at 0.
    fn spread(n: u32, span: Duration) -> Vec<Duration> {
        (0..n).map(|i| span * i / n).collect()
    }

    const DEFAULTS: Wait = Wait {
        min: Duration::from_millis(50),
        max: Duration::from_secs(1),
    };

    #[tokio::test(start_paused = true)]
    async fn an_isolated_change_runs_at_once() {
        let changes = [ms(0), ms(500), ms(2000)];
        let started = runs(&changes, ms(5), DEFAULTS, WaitMode::Leading).await;
        assert_eq!(started, changes, "each change is alone: no wait at all");
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_within_min_of_the_last_run_waits_for_min_of_quiet() {
        let started = runs(&[ms(0), ms(20), ms(40)], ms(5), DEFAULTS, WaitMode::Leading).await;
        // The first runs at once; the next two are coalesced, due 50 ms
        // after the last of them.
        assert_eq!(started, [ms(0), ms(90)]);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_during_a_long_run_are_coalesced_into_one_run_after_it() {
        let started = runs(
            &[ms(0), ms(100), ms(150)],
            ms(200),
            DEFAULTS,
            WaitMode::Leading,
        )
        .await;
        assert_eq!(started, [ms(0), ms(200)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_300_changes_in_half_a_second_runs_at_most_5_times() {
        let changes = spread(300, ms(450));
        let last = *changes.last().unwrap();
        // A run as cheap as one key, and as dear as 20,000 keys in one file.
        for render in [ms(1), ms(45)] {
            let started = runs(&changes, render, DEFAULTS, WaitMode::Leading).await;
            assert!(started.len() <= 5, "{render:?}: {started:?}");
            assert_eq!(started[0], ms(0), "the first change runs at once");
            assert!(
                *started.last().unwrap() >= last,
                "the last state lands: {started:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_changes_in_a_second_run_a_handful_of_times_and_the_last_lands() {
        let changes = spread(1000, Duration::from_secs(1));
        let last = *changes.last().unwrap();
        for render in [ms(1), ms(45)] {
            let started = runs(&changes, render, DEFAULTS, WaitMode::Leading).await;
            assert!(started.len() <= 5, "{render:?}: {started:?}");
            let final_run = *started.last().unwrap();
            assert!(final_run >= last, "{started:?}");
            assert!(final_run <= last + DEFAULTS.min + render, "{started:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn under_continuous_churn_max_bounds_the_wait_and_runs_stay_min_apart() {
        // A change every 10 ms for 5 s never leaves 50 ms of quiet.
        let changes = spread(500, Duration::from_secs(5));
        let started = runs(&changes, ms(5), DEFAULTS, WaitMode::Leading).await;
        for pair in started.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= DEFAULTS.min, "at most once per MIN: {started:?}");
            assert!(
                gap <= DEFAULTS.max + ms(10),
                "MAX bounds the wait: {started:?}"
            );
        }
        assert!(*started.last().unwrap() >= *changes.last().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn trailing_mode_waits_for_min_of_quiet_even_for_an_isolated_change() {
        let started = runs(&[ms(0), ms(500)], ms(5), DEFAULTS, WaitMode::Trailing).await;
        assert_eq!(started, [ms(50), ms(550)]);
        let burst = runs(&spread(300, ms(450)), ms(5), DEFAULTS, WaitMode::Trailing).await;
        assert_eq!(burst.len(), 1, "{burst:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_wait_every_change_runs_at_once() {
        let none = Wait {
            min: Duration::ZERO,
            max: Duration::ZERO,
        };
        let changes = spread(20, ms(200));
        for mode in [WaitMode::Leading, WaitMode::Trailing] {
            assert_eq!(runs(&changes, ms(1), none, mode).await, changes);
        }
    }

    #[test]
    fn reload_retries_back_off_and_a_success_cancels_them() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        let retry = ReloadRetry {
            key: key("reload"),
            units: vec!["a".into()],
            attempt: 1,
        };
        let delay = s.reload_failed(retry.clone(), t0);
        assert!(s.take_due_reloads(t0).is_empty());
        assert_eq!(s.take_due_reloads(t0 + delay), std::slice::from_ref(&retry));
        s.reload_failed(retry, t0);
        s.reload_done(&key("reload"));
        assert_eq!(s.pending_reloads(), 0);
    }
}
