//! How the publish targets retry a remote that is down or failing: exponential backoff
//! with jitter (the `backon` crate), a bounded number of attempts, then a clear error.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Retry budget for one remote operation (one blob, one API call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (at least 1).
    pub max_attempts: usize,
    /// Delay before the first retry; it doubles each time.
    pub min_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Six attempts over roughly half a minute: long enough to ride out a registry or API
    /// restart, short enough that a nightly run fails while someone can still act on it.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// A policy with `max_attempts` attempts and short delays (tests, interactive use).
    pub fn quick(max_attempts: usize) -> Self {
        RetryPolicy {
            max_attempts,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
        }
    }

    /// The backon builder for this policy.
    pub fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            // backon counts retries, not attempts.
            .with_max_times(self.max_attempts.max(1) - 1)
            .with_jitter()
    }

    /// Attempts in total (for error messages).
    pub fn attempts(&self) -> usize {
        self.max_attempts.max(1)
    }
}
