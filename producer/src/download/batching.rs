//! How many downloads go in one task message, and which messages were
//! sent.
//!
//! Every message costs the broker the same whatever it carries: a write to
//! the quorum queue's log, a delivery, an ack and a result. For small files
//! that cost is most of the broker's work, so several downloads share a
//! message; for large files one slow message would keep a worker busy while
//! others idle, so each gets its own. File sizes are not known before the
//! first downloads finish: messages start with one download each, and the
//! collector's [`Batching::observe`] of finished downloads sets how many
//! the next messages carry, aiming at [`TARGET_MESSAGE_BYTES`] of files per
//! message. Every download a worker reports counts, with the bytes it
//! received: a saved file with its size, a failed download with what came
//! before it failed. So a list of URLs that fail at once (404s) is carried
//! as many to a message as small files are; the downloads of a message run
//! concurrently, so slow failures batched together overlap too. The
//! messages sent are recorded in the job's
//! [`MessageRegistry`](crate::job::MessageRegistry).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::job::SharedRegistry;

/// About this many bytes of files per message.
pub(crate) const TARGET_MESSAGE_BYTES: u64 = 2 << 20;

/// Downloads per message and the layout of the messages sent, shared by the
/// publishing side and the collector.
#[derive(Debug, Clone)]
pub(crate) struct Batching {
    /// Downloads the next message carries.
    per_message: Arc<AtomicU64>,
    /// At most this many per message: an eighth of the in-flight window,
    /// so that messages in flight still spread over several workers.
    max: u64,
    /// Bytes and count of the downloads finished so far.
    seen: Arc<Mutex<(u64, u64)>>,
    /// The messages sent and the tasks answered. A message is recorded
    /// before it is published, so every result finds it here, and
    /// forgotten once all its tasks are answered.
    pub(crate) messages: SharedRegistry<()>,
}

impl Batching {
    /// With a window of `max_in_flight` downloads.
    pub(crate) fn new(max_in_flight: usize) -> Self {
        Batching {
            per_message: Arc::new(AtomicU64::new(1)),
            max: (max_in_flight as u64 / 8).max(1),
            seen: Arc::default(),
            messages: SharedRegistry::default(),
        }
    }

    /// How many downloads the next message carries.
    pub(crate) fn per_message(&self) -> u64 {
        self.per_message.load(Ordering::Relaxed)
    }

    /// Takes note of a finished download of `bytes`, saved or failed.
    pub(crate) fn observe(&self, bytes: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.0 = seen.0.saturating_add(bytes);
        seen.1 += 1;
        let mean = (seen.0 / seen.1).max(1);
        let per_message = (TARGET_MESSAGE_BYTES / mean).clamp(1, self.max);
        self.per_message.store(per_message, Ordering::Relaxed);
    }

    /// Records a message about to be sent; `false` when its first task is
    /// answered already and it must not be sent.
    pub(crate) fn sent(&self, first: u64, tasks: u64) -> bool {
        self.messages.lock().publish(first, tasks, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_share_messages_and_large_ones_do_not() {
        let batching = Batching::new(64);
        assert_eq!(batching.per_message(), 1, "before any file is known");
        batching.observe(256 << 10);
        assert_eq!(batching.per_message(), 8, "2 MiB of 256 KiB files");
        for _ in 0..10 {
            batching.observe(8 << 20);
        }
        assert_eq!(batching.per_message(), 1, "large files go one by one");

        let tiny = Batching::new(64);
        tiny.observe(0);
        assert_eq!(tiny.per_message(), 8, "capped at an eighth of the window");
        let narrow = Batching::new(4);
        narrow.observe(1);
        assert_eq!(narrow.per_message(), 1, "never zero");
    }
}
