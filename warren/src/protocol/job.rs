//! [`JobId`], the identifier every message of a job carries.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Identifies one job: 1 to 64 characters from `[A-Za-z0-9_-]`. The producer
/// generates a random UUID in simple form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// A fresh random id.
    pub fn random() -> Self {
        JobId(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Checks an id received from the wire.
    ///
    /// # Errors
    /// [`Error::Malformed`] when it is empty, too long or has other characters.
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty()
            || text.len() > 64
            || !text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::malformed(
                "message",
                format!("invalid job id {text:?} (expected 1 to 64 of [A-Za-z0-9_-])"),
            ));
        }
        Ok(JobId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `message_id` of this job's task `index`: `<job>:<index>`.
    pub fn task_message_id(&self, index: u64) -> String {
        format!("{}:{index}", self.0)
    }

    /// Checks that a message (`what`: "result", "body chunk") that came
    /// through this job's reply queue names this job. One that names another
    /// job was published into the wrong queue by some client; ignoring it
    /// could leave this job waiting for an answer that went astray.
    ///
    /// # Errors
    /// [`Error::Malformed`] naming both jobs.
    pub fn check_reply(&self, what: &'static str, named: &JobId) -> Result<()> {
        if named == self {
            return Ok(());
        }
        Err(Error::malformed(
            what,
            format!(
                "it names job {named} but came through the reply queue of job {self} \
                 (a client published it to the wrong queue)"
            ),
        ))
    }
}

impl TryFrom<String> for JobId {
    type Error = Error;
    fn try_from(text: String) -> Result<Self> {
        JobId::parse(&text)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_naming_another_job_is_malformed() {
        let job = JobId::parse("j1").unwrap();
        assert!(job.check_reply("result", &job.clone()).is_ok());
        let err = job
            .check_reply("result", &JobId::parse("j2").unwrap())
            .unwrap_err();
        assert!(err.is_poison());
        assert_eq!(
            err.to_string(),
            "malformed result: it names job j2 but came through the reply queue of job j1 \
             (a client published it to the wrong queue)"
        );
    }
}
