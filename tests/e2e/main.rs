//! End-to-end tests: the real `producer` and `worker` binaries against a
//! real RabbitMQ, each test under its own queue prefix.
//!
//! Run with `cargo test --workspace` (which also builds the binaries). The
//! broker comes from `AMQP_URL` or the local default; without one the tests
//! fail and say how to start it. Reference answers come from Python
//! (`math.fsum`, exact fractions) and `.npy` files are written by numpy.

// Items of a test binary are never reachable from outside it.
#![allow(unreachable_pub)]

mod support;

/// Sum jobs: exact answers against Python, every input format and dtype.
mod sum;

/// Sums by reference: workers read their own ranges of a shared file, an
/// HTTP URL or an S3 object; exact answers, changed and refused sources.
mod by_reference;

/// Jobs that outlive their producer: attach after a SIGKILL, jobs,
/// cancel, the attach lock, a changed input, the job TTL.
mod durable;

/// On a broker of the test's own: a broker restart mid-sum, and the chaos
/// soak (a sum and a download through killed workers, cut connections and
/// a broker restart).
mod chaos;

/// Download jobs: files from a local HTTP server, both delivery modes,
/// retries, limits, unsafe names, re-runs.
mod download;

/// Bad input: a clear error, a non-zero exit, nothing left on the broker.
mod inputs;

/// Failures: killed and stopped workers, no workers, broker trouble,
/// malformed tasks, cancelled jobs, duplicate results.
mod faults;

/// The documented wire protocol, spoken by a Python client.
mod protocol;

/// Connecting securely: TLS with test-made certificates, the broker URL
/// from a file, a virtual host per tenant.
mod security;

/// The docker deployment: the compose file and the Dockerfile, parsed and
/// checked against the binaries.
mod deploy;

/// A lost node of a 3-node RabbitMQ cluster: failover to the next broker URL.
mod cluster;

/// Operating workers and jobs: metrics and health endpoints, JSON logs,
/// status, local workers, message limits.
mod ops;
