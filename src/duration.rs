//! Human-friendly durations (`100ms`, `2s`, `1m`, `1h`) as used in resource
//! files and on the command line. Every duration a user can set is parsed
//! here or checked against [`MAX_SECS`], so none can overflow the clock
//! arithmetic (`Instant + Duration`) that uses it later.

use std::time::Duration;

/// The longest duration any setting accepts: 365 days. Far beyond any
/// sensible timeout, debounce or polling period, and far below what makes
/// `Instant + Duration` (or a tokio timer) overflow.
pub const MAX_SECS: u64 = 365 * 24 * 3600;

/// [`MAX_SECS`] as a [`Duration`].
pub const MAX: Duration = Duration::from_secs(MAX_SECS);

/// Parses `250ms`, `2s`, `1.5s`, `3m`, `1h`; a bare number means seconds.
/// Anything longer than [`MAX`] is an error naming the text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 250ms, 2s or 1m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit `{unit}`: use ms, s, m or h"
            ))
        }
    };
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if d <= MAX => Ok(d),
        _ => Err(format!(
            "`{text}` is longer than the longest duration allowed, 365 days"
        )),
    }
}

/// A coalescing window (`--wait MIN:MAX`): coalesced changes render after
/// `min` of quiet, at the latest `max` after the first of them; how an
/// isolated change waits is the [`WaitMode`](crate::watch::debounce::WaitMode)'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Wait {
    fn default() -> Self {
        Wait {
            min: Duration::from_millis(50),
            max: Duration::from_secs(1),
        }
    }
}

impl std::str::FromStr for Wait {
    type Err = String;

    /// `MIN` or `MIN:MAX`; MAX defaults to the larger of MIN and 1s.
    fn from_str(text: &str) -> Result<Self, String> {
        let (min, max) = match text.split_once(':') {
            Some((min, max)) => (parse_duration(min)?, Some(parse_duration(max)?)),
            None => (parse_duration(text)?, None),
        };
        let max = max.unwrap_or_else(|| min.max(Duration::from_secs(1)));
        if max < min {
            return Err(format!("`{text}`: MAX must not be smaller than MIN"));
        }
        Ok(Wait { min, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_common_units_and_bare_seconds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn durations_beyond_a_year_are_refused_naming_the_text() {
        assert_eq!(parse_duration("8760h"), Ok(MAX));
        let e = parse_duration("8761h").unwrap_err();
        assert!(e.contains("`8761h`") && e.contains("365 days"), "{e}");
        let e = parse_duration("18446744073709551615").unwrap_err();
        assert!(e.contains("365 days"), "{e}");
        let e = "1s:18446744073709551615s".parse::<Wait>().unwrap_err();
        assert!(e.contains("18446744073709551615s"), "{e}");
    }

    #[test]
    fn wait_takes_min_and_optional_max() {
        let w: Wait = "100ms:2s".parse().unwrap();
        assert_eq!(
            (w.min, w.max),
            (Duration::from_millis(100), Duration::from_secs(2))
        );
        let w: Wait = "100ms".parse().unwrap();
        assert_eq!(w.max, Duration::from_secs(1));
        assert!("2s:1s".parse::<Wait>().is_err());
    }
}
