//! Time-based decisions as pure functions of events and a clock: debounce
//! windows and retry backoff. Nothing here sleeps or reads the clock itself,
//! so the watch loop's timing is tested without waiting.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::duration::Wait;

/// How a change waits before its render (`--wait-mode`, `wait_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WaitMode {
    /// An isolated change (nothing run for its resource within the last
    /// MIN) is due at once; changes within MIN of the last run wait for MIN
    /// of quiet, at most MAX after the first of them. A resource runs at
    /// most about once per MIN, and the last change always runs.
    #[default]
    Leading,
    /// Every change waits for MIN of quiet, at most MAX after the first of
    /// the burst (consul-template's `wait`).
    Trailing,
}

impl WaitMode {
    pub fn label(self) -> &'static str {
        match self {
            WaitMode::Leading => "leading",
            WaitMode::Trailing => "trailing",
        }
    }
}

/// Pending changes per key (a unit), each due by its [`WaitMode`]: after
/// `min` of quiet and at the latest `max` after the first change of a
/// burst, or at once when nothing ran for the key within `min`.
#[derive(Debug)]
pub struct Debouncer<K> {
    pending: HashMap<K, Window>,
    /// When each key was last taken due: its last run started then.
    last_run: HashMap<K, Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    first: Instant,
    last: Instant,
    wait: Wait,
}

impl Window {
    fn due_at(&self) -> Instant {
        after(self.last, self.wait.min).min(after(self.first, self.wait.max))
    }

    /// Due at `when`, without a window.
    fn at(when: Instant) -> Window {
        Window {
            first: when,
            last: when,
            wait: Wait {
                min: Duration::ZERO,
                max: Duration::ZERO,
            },
        }
    }
}

/// `at + delay`, or a moment decades away when that cannot be represented.
/// Settings are bounded (`duration::MAX`), so this only guards a delay
/// computed from them (a backoff) against ever panicking.
pub fn after(at: Instant, delay: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);
    at.checked_add(delay)
        .or_else(|| at.checked_add(FAR))
        .unwrap_or(at)
}

impl<K: Hash + Eq + Clone> Default for Debouncer<K> {
    fn default() -> Self {
        Debouncer {
            pending: HashMap::new(),
            last_run: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Debouncer<K> {
    /// Records a change to `key` at `now`.
    pub fn touch(&mut self, key: K, now: Instant, wait: Wait, mode: WaitMode) {
        if let Some(window) = self.pending.get_mut(&key) {
            window.last = now;
            return;
        }
        let recent = self
            .last_run
            .get(&key)
            .is_some_and(|run| now < after(*run, wait.min));
        let window = match mode {
            WaitMode::Leading if !recent => Window::at(now),
            _ => Window {
                first: now,
                last: now,
                wait,
            },
        };
        self.pending.insert(key, window);
    }

    /// Makes `key` due at `when`, with no debounce window (start-up,
    /// resyncs, retries, drift restores).
    pub fn at(&mut self, key: K, when: Instant) {
        self.pending.insert(key, Window::at(when));
    }

    /// The earliest moment something becomes due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(Window::due_at).min()
    }

    /// Removes and returns every key due at `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<K> {
        let due: Vec<K> = self
            .pending
            .iter()
            .filter(|(_, w)| w.due_at() <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            self.pending.remove(k);
            self.last_run.insert(k.clone(), now);
        }
        due
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When `key` is due, if it is pending.
    pub fn due_at(&self, key: &K) -> Option<Instant> {
        self.pending.get(key).map(Window::due_at)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.pending.contains_key(key)
    }

    pub fn clear(&mut self) {
        self.pending.clear();
        self.last_run.clear();
    }
}

/// Capped exponential backoff with jitter: 0.5 s, 1 s, 2 s … up to `cap`,
/// each stretched by up to a quarter at random so that many hosts do not
/// retry in step.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based), with `jitter` in
    /// 0.0..1.0.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.cap);
        capped + capped.mul_f64(jitter.clamp(0.0, 1.0) / 4.0)
    }

    /// The delay with random jitter.
    pub fn next(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn wait(min: u64, max: u64) -> Wait {
        Wait {
            min: ms(min),
            max: ms(max),
        }
    }

    #[test]
    fn trailing_a_single_change_is_due_after_min_of_quiet() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        d.touch("bird", t0, wait(100, 1000), WaitMode::Trailing);
        assert!(d.take_due(t0 + ms(99)).is_empty());
        assert_eq!(d.next_deadline(), Some(t0 + ms(100)));
        assert_eq!(d.take_due(t0 + ms(100)), ["bird"]);
        assert!(d.is_empty());
    }

    #[test]
    fn trailing_a_steady_burst_is_due_at_max_after_its_first_change() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        // A change every 50 ms never leaves 100 ms of quiet.
        for i in 0..40 {
            let now = t0 + ms(50 * i);
            if i > 0 && d.take_due(now) == ["bird"] {
                assert_eq!(now, t0 + ms(1000), "due exactly at MAX");
                return;
            }
            d.touch("bird", now, wait(100, 1000), WaitMode::Trailing);
        }
        panic!("the burst never became due");
    }

    #[test]
    fn keys_debounce_independently() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        d.touch("a", t0, wait(100, 1000), WaitMode::Trailing);
        d.touch("b", t0 + ms(80), wait(100, 1000), WaitMode::Trailing);
        assert_eq!(d.take_due(t0 + ms(100)), ["a"]);
        assert_eq!(d.take_due(t0 + ms(180)), ["b"]);
    }

    #[test]
    fn at_makes_a_key_due_at_that_moment_without_a_window() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        d.touch("a", t0, wait(100, 1000), WaitMode::Trailing);
        d.at("a", t0);
        assert_eq!(d.take_due(t0), ["a"]);
    }

    #[test]
    fn a_huge_wait_never_overflows() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        let huge = Wait {
            min: Duration::MAX,
            max: Duration::MAX,
        };
        d.touch("a", t0, huge, WaitMode::Trailing);
        assert!(d.next_deadline().unwrap() > t0 + Duration::from_secs(3600));
        assert!(d.take_due(t0).is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let b = Backoff {
            base: ms(500),
            cap: Duration::from_secs(30),
        };
        assert_eq!(b.delay(1, 0.0), ms(500));
        assert_eq!(b.delay(2, 0.0), ms(1000));
        assert_eq!(b.delay(4, 0.0), ms(4000));
        assert_eq!(b.delay(40, 0.0), Duration::from_secs(30));
        assert_eq!(b.delay(1, 1.0), ms(625));
        assert!(b.next(3) >= ms(2000) && b.next(3) <= ms(2500));
    }
}
