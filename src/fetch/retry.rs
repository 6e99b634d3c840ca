//! When a failed attempt is worth another, and how long to wait first.
//!
//! Transient failures (busy or paused, connection refused or reset, connection lost, the
//! silence timeout, HTTP 408/429/5xx) are retried with exponential backoff and jitter, a
//! server's hint (a native refusal's, HTTP's `Retry-After`) taking precedence, within
//! `--retry N` attempts and `--retry-for SECS` in all. Permanent failures (bad token, not
//! allowed, a digest mismatch after a fresh try, anything local, usage) are not retried.
//! Owns the policy only; the attempts are the caller's.

use std::time::{Duration, Instant};

/// First wait; each retry doubles it, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);

pub struct Retry {
    max: u32,
    done: u32,
    until: Option<Instant>,
    /// xorshift state for the jitter: spreads a fleet that failed together.
    rng: u64,
}

impl Retry {
    pub fn new(max: u32, for_at_most: Option<Duration>) -> Retry {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Retry {
            max,
            done: 0,
            until: for_at_most.map(|d| Instant::now() + d),
            rng: seed ^ (std::process::id() as u64) << 32 | 1,
        }
    }

    /// Retries so far.
    pub fn done(&self) -> u32 {
        self.done
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// How long to wait before the next attempt, or `None` when no attempt is left.
    /// `hint`: the server's own idea of when to come back.
    pub fn next(&mut self, hint: Option<Duration>) -> Option<Duration> {
        if self.done >= self.max {
            return None;
        }
        let backoff = FIRST_DELAY.saturating_mul(1 << self.done.min(16)).min(MAX_DELAY);
        // ±25% jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = (self.rng % 501) as f64 / 1000.0 + 0.75;
        let mut wait = backoff.mul_f64(jitter);
        if let Some(h) = hint {
            wait = h.max(Duration::from_millis(100)).min(MAX_DELAY * 10);
        }
        if let Some(until) = self.until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || wait > left {
                return None;
            }
        }
        self.done += 1;
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_with_jitter_and_stops() {
        let mut r = Retry::new(4, None);
        let waits: Vec<Duration> = std::iter::from_fn(|| r.next(None)).collect();
        assert_eq!(waits.len(), 4);
        for (i, w) in waits.iter().enumerate() {
            let base = FIRST_DELAY * (1 << i);
            assert!(*w >= base.mul_f64(0.74) && *w <= base.mul_f64(1.26), "{i}: {w:?}");
        }
        let mut r = Retry::new(3, None);
        assert_eq!(r.next(Some(Duration::from_secs(5))), Some(Duration::from_secs(5)), "the server's hint wins");
        assert_eq!(Retry::new(0, None).next(None), None, "--retry 0");
        assert_eq!(Retry::new(9, Some(Duration::ZERO)).next(None), None, "--retry-for spent");
    }

    #[test]
    fn counts_what_it_allowed() {
        let mut r = Retry::new(2, None);
        assert_eq!((r.done(), r.max()), (0, 2));
        assert!(r.next(None).is_some());
        assert_eq!(r.done(), 1);
        assert!(r.next(None).is_some());
        assert_eq!(r.next(None), None);
        assert_eq!((r.done(), r.max()), (2, 2), "a refused retry is not counted");
    }

    #[test]
    fn the_delay_doubles_up_to_its_cap_and_the_jitter_spreads_it() {
        let mut r = Retry::new(60, None);
        let waits: Vec<Duration> = std::iter::from_fn(|| r.next(None)).collect();
        assert_eq!(waits.len(), 60);
        // From the seventh retry on (500 ms × 2^6 = 32 s), the cap: 30 s ± 25%.
        let capped = &waits[6..];
        for w in capped {
            assert!(*w >= MAX_DELAY.mul_f64(0.75) && *w <= MAX_DELAY.mul_f64(1.25), "{w:?}");
        }
        // The jitter spans its range: over 54 draws, some fall in each outer fifth.
        let ratio = |w: &Duration| w.as_secs_f64() / MAX_DELAY.as_secs_f64();
        assert!(capped.iter().any(|w| ratio(w) < 0.85), "no low draw: {capped:?}");
        assert!(capped.iter().any(|w| ratio(w) > 1.15), "no high draw: {capped:?}");
    }

    #[test]
    fn the_servers_hint_is_bounded_and_the_deadline_holds() {
        let mut r = Retry::new(9, None);
        assert_eq!(r.next(Some(Duration::ZERO)), Some(Duration::from_millis(100)), "a hint of 0 is not a busy loop");
        assert_eq!(r.next(Some(Duration::from_secs(86_400))), Some(MAX_DELAY * 10), "a day's hint is capped");
        assert_eq!(r.next(Some(MAX_DELAY * 10)), Some(MAX_DELAY * 10));
        // --retry-for: a wait that fits is allowed, one that would end past it is not.
        let mut r = Retry::new(9, Some(Duration::from_secs(60)));
        assert_eq!(r.next(Some(Duration::from_secs(5))), Some(Duration::from_secs(5)));
        assert_eq!(r.next(Some(Duration::from_secs(120))), None, "a wait past --retry-for");
        assert_eq!(r.done(), 1);
    }
}
