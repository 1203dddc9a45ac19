//! [`QueuePrefix`], the validated prefix of every queue and exchange name.

use std::fmt;

use crate::error::{Error, Result};

/// A validated queue-name prefix: 1 to 100 characters from
/// `[A-Za-z0-9._:-]`, not starting with `amq.` (reserved by the broker).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueuePrefix(String);

impl QueuePrefix {
    /// Checks a prefix.
    ///
    /// # Errors
    /// [`Error::InvalidPrefix`] saying which rule it breaks.
    pub fn new(prefix: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason,
        };
        if prefix.is_empty() {
            return Err(invalid("it is empty"));
        }
        if prefix.len() > 100 {
            return Err(invalid("it is longer than 100 characters"));
        }
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
        {
            return Err(invalid(
                "only letters, digits and . _ - : are allowed in queue names",
            ));
        }
        if prefix.starts_with("amq.") {
            return Err(invalid("names starting with amq. are reserved by RabbitMQ"));
        }
        Ok(QueuePrefix(prefix.to_owned()))
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueuePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rules() {
        assert!(QueuePrefix::new("warren").is_ok());
        assert!(QueuePrefix::new("t-1.run_2:x").is_ok());
        assert!(QueuePrefix::new("").is_err());
        assert!(QueuePrefix::new("has space").is_err());
        assert!(QueuePrefix::new("amq.mine").is_err());
        assert!(QueuePrefix::new(&"x".repeat(101)).is_err());
    }
}
