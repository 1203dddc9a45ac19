//! [`Error`], the worker's one error type, and its [`Result`] alias.

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The flags do not make sense.
    #[error("{0}")]
    Usage(String),

    /// The metrics endpoint's address cannot be bound (in use, not ours).
    #[error("cannot listen on {addr} for metrics")]
    MetricsListen {
        /// The `--metrics-addr` asked for.
        addr: std::net::SocketAddr,
        /// Why binding it failed.
        #[source]
        source: std::io::Error,
    },

    /// Broker, topology or protocol failure from the shared library.
    #[error(transparent)]
    Warren(#[from] warren::Error),
}

impl Error {
    /// A hint that helps the user fix the problem, if there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::Warren(e) => e.hint(),
            _ => None,
        }
    }
}
