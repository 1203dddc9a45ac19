//! Sweeping `OUT/.warren-tmp`: the temporary files of jobs that are over.
//!
//! Every temporary file of a download starts with its job's id
//! (`<job>-<task>` from the producer, `<job>-<attempt>` and `<job>-marker`
//! from workers). A job whose reply queue is gone is over (it ended, was
//! cancelled, or its producer died), so its files will never be placed: a
//! new download job into the same directory removes them before it starts.

use std::path::Path;

use warren::JobId;
use warren::filename::TEMP_DIR;

use crate::job::JobSession;

/// Removes the temporary files of every other job in `out_dir` that is
/// over; returns how many. Files whose name does not start with a job id
/// the producer makes (32 hex digits), and jobs the broker cannot tell
/// about, are left alone.
pub(crate) async fn dead_jobs(out_dir: &Path, session: &mut JobSession) -> usize {
    let Ok(entries) = std::fs::read_dir(out_dir.join(TEMP_DIR)) else {
        return 0;
    };
    let mut removed = 0;
    let mut over: Vec<(JobId, bool)> = Vec::new();
    for entry in entries.filter_map(std::result::Result::ok) {
        let name = entry.file_name();
        let Some(job) = name.to_str().and_then(job_of) else {
            continue;
        };
        if job == session.job {
            continue;
        }
        let gone = match over.iter().find(|(known, _)| *known == job) {
            Some((_, gone)) => *gone,
            None => {
                let gone = session.job_exists(&job).await == Some(false);
                over.push((job, gone));
                gone
            }
        };
        if gone && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The job id a temporary file's name starts with, if it is one the Rust
/// producer makes: 32 lowercase hex digits, then `-`.
fn job_of(name: &str) -> Option<JobId> {
    let (id, rest) = name.split_at_checked(32)?;
    let hex = id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && rest.starts_with('-')).then(|| JobId::parse(id).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_that_start_with_a_producer_job_id_are_swept() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(job_of(&format!("{id}-3")).unwrap().as_str(), id);
        assert_eq!(job_of(&format!("{id}-marker")).unwrap().as_str(), id);
        assert!(job_of(id).is_none(), "no task part");
        assert!(job_of("my-job-3").is_none(), "a client's own id");
        assert!(job_of(&format!("{}-3", id.to_uppercase())).is_none());
        assert!(job_of("ünïcode-0123456789abcdef0123456789ab-1").is_none());
    }
}
