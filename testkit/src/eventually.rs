//! [`eventually`]: the one way the tests wait for something to become
//! true: a bounded number of tries within a bounded time, a short pause
//! between them, and a failure that shows what was last seen.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// The pause between two tries: short next to any timeout a test gives,
/// long enough not to busy-loop on a broker, a process or a file.
const PAUSE: Duration = Duration::from_millis(50);

/// Runs `check` until it returns `Ok`, and returns that value. `Err` says
/// what the check saw instead; after `timeout` the last one is the panic
/// message. The check runs at least once, and at most once per 50 ms.
///
/// # Panics
/// When `check` has not returned `Ok` within `timeout`.
pub fn eventually<T, E: Display>(timeout: Duration, mut check: impl FnMut() -> Result<T, E>) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if started.elapsed() >= timeout => {
                panic!("still not so after {timeout:?}: {seen}")
            }
            Err(_) => std::thread::sleep(PAUSE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_of_the_first_successful_try() {
        let mut tries = 0;
        let value = eventually(Duration::from_secs(5), || {
            tries += 1;
            if tries == 3 {
                Ok(tries * 10)
            } else {
                Err("not yet")
            }
        });
        assert_eq!(value, 30);
    }

    #[test]
    #[should_panic(expected = "still not so after 200ms: saw 7")]
    fn panics_with_what_was_last_seen_after_the_timeout() {
        eventually(Duration::from_millis(200), || Err::<(), _>("saw 7"));
    }

    #[test]
    fn gives_up_close_to_the_timeout() {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| {
            eventually(Duration::from_millis(300), || Err::<(), _>("never"));
        });
        assert!(outcome.is_err());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
