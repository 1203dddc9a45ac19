//! Everything the warren `producer` and `worker` must agree on, kept in one
//! place so the two binaries cannot drift apart.
//!
//! - [`protocol`]: the wire format of tasks and results: AMQP properties,
//!   headers, JSON bodies and the protocol version check. `docs/PROTOCOL.md`
//!   describes the same format in prose; golden tests pin the bytes.
//! - [`topology`]: queue and exchange names built from the queue prefix, their
//!   arguments, and the code that declares them.
//! - [`backoff`]: [`ExponentialBackoff`], the delays between retries.
//! - [`broker`]: connecting (with a redacted URL in every message), channels
//!   with publisher confirms, and classifying broker errors.
//! - [`exact`]: exact summation: the per-chunk accumulator workers run, the
//!   partial-sum form they send, and the producer's combine and final rounding.
//! - [`dtype`]: the element types a sum job can carry.
//! - [`config`]: the broker flags both binaries flatten into their CLIs, and
//!   [`RedactedUrl`].
//! - [`filename`]: safe relative file names for downloads.
//! - [`writeback`]: starting a downloaded file's writeback as soon as it is
//!   complete, so that a job's one final sync finds little left to write.
//! - [`logging`]: the shared logging flags and subscriber set-up.
//! - [`size`]: parsing byte sizes such as `2GiB`.
//! - [`source`]: reading the sources of sums by reference (shared files,
//!   HTTP ranges, S3 objects) and their version pins.
//! - [`shutdown`]: what SIGINT and SIGTERM do in both binaries.
//! - [`error`]: [`Error`] and [`Result`].
//!
//! This crate holds no CLI entry point, no input parsing and no task
//! execution: those belong to the binaries.

#![warn(missing_docs)]

pub mod backoff;
pub mod broker;
pub mod config;
pub mod dtype;
pub mod error;
pub mod exact;
pub mod filename;
pub mod logging;
pub mod protocol;
pub mod shutdown;
pub mod size;
pub mod source;
pub mod topology;
pub mod writeback;

pub use backoff::{ExponentialBackoff, Jitter};
pub use config::{BrokerArgs, BrokerConfig, QueuePrefix, RedactedUrl, TlsFiles, parse_duration};
pub use dtype::Dtype;
pub use error::{Error, Result, display_chain, print_error};
pub use protocol::{JobId, PROTOCOL_VERSION, TaskKind};
pub use topology::Topology;

/// The broker URL used when neither `--amqp-url` nor `AMQP_URL` is set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The queue prefix used when neither `--queue-prefix` nor
/// `WARREN_QUEUE_PREFIX` is set.
pub const DEFAULT_QUEUE_PREFIX: &str = "warren";
