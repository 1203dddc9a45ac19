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

    /// Broker, topology or protocol failure from the shared library.
    #[error(transparent)]
    Warren(#[from] warren::Error),
}

impl Error {
    /// A hint that helps the user fix the problem, if there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::Warren(e) if e.is_access_refused() => {
                Some("check the user name, password and virtual host in --amqp-url / AMQP_URL")
            }
            Error::Warren(e) if e.is_precondition_failed() => Some(
                "a queue or exchange of that name exists with other settings; \
                 use another --queue-prefix or delete it",
            ),
            _ => None,
        }
    }
}
