//! [`ExponentialBackoff`], the one way warren waits between retries: the
//! broker connection (`broker::connect`, the worker's reconnect loop), the
//! worker's download attempts and its reads of a range by reference. Each
//! caller picks its own first delay, cap and [`Jitter`]; what to retry and
//! how often stays with the caller.

use std::time::Duration;

/// How much of each delay is left to chance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the doubled delay: for a few quick retries of one's own
    /// read, where nobody else retries in step with us.
    None,
    /// "Equal jitter": drawn uniformly from `[d/2, d)`, so clients that
    /// failed together (a broker restart, a server's 503) come back spread
    /// out, yet never sooner than half the delay.
    Equal,
}

/// Delays between retries that double from `first` up to `cap`, each
/// jittered as asked.
#[derive(Debug, Clone)]
pub struct ExponentialBackoff {
    /// The delay the next call draws from, before jitter.
    next: Duration,
    first: Duration,
    cap: Duration,
    jitter: Jitter,
}

impl ExponentialBackoff {
    /// Delays from `first`, doubling after each one up to `cap`.
    pub fn new(first: Duration, cap: Duration, jitter: Jitter) -> Self {
        ExponentialBackoff {
            next: first.min(cap),
            first,
            cap,
            jitter,
        }
    }

    /// The delay before the next retry; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = match self.jitter {
            Jitter::None => self.next,
            Jitter::Equal => self.next.mul_f64(0.5 + fastrand::f64() / 2.0),
        };
        self.next = self.next.saturating_mul(2).min(self.cap);
        delay
    }

    /// Starts again from the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.first.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_jitter_doubles_within_half_to_whole_up_to_its_cap_and_resets() {
        let (first, cap) = (Duration::from_millis(200), Duration::from_secs(5));
        let mut backoff = ExponentialBackoff::new(first, cap, Jitter::Equal);
        let mut ceiling = first;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay < ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(cap);
        }
        assert_eq!(ceiling, cap);
        backoff.reset();
        let delay = backoff.next_delay();
        assert!(delay >= first / 2 && delay < first, "{delay:?}");
    }

    #[test]
    fn no_jitter_gives_exactly_the_doubled_delays() {
        let mut backoff = ExponentialBackoff::new(
            Duration::from_millis(200),
            Duration::from_millis(700),
            Jitter::None,
        );
        let delays: Vec<_> = (0..4).map(|_| backoff.next_delay()).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(delays, [ms(200), ms(400), ms(700), ms(700)]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), ms(200));
    }

    #[test]
    fn doubling_saturates_instead_of_overflowing() {
        let mut backoff = ExponentialBackoff::new(Duration::MAX / 2, Duration::MAX, Jitter::None);
        for _ in 0..4 {
            backoff.next_delay();
        }
        assert_eq!(backoff.next_delay(), Duration::MAX);
    }

    #[test]
    fn a_first_delay_over_the_cap_is_capped() {
        let mut backoff =
            ExponentialBackoff::new(Duration::from_secs(9), Duration::from_secs(2), Jitter::None);
        assert_eq!(backoff.next_delay(), Duration::from_secs(2));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_secs(2));
    }
}
