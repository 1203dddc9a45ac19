//! The answer on stdout (bare, or one JSON object with `--json`), notes on
//! stderr, and the exit status that goes with them.

use std::collections::HashMap;
use std::io::Write;

use serde::Serialize;
use serde_json::json;
use warren::exact::NonFinite;

use crate::download::DownloadSummary;
use crate::download::manifest::{ManifestRecord, Records};
use crate::progress::Progress;
use crate::status::StatusReport;
use crate::sum::SumReport;

/// URLs shown under a failure reason that several share; `--json` and the
/// manifest list them all.
const URLS_SHOWN_PER_REASON: usize = 5;

/// The `--json` object of a run that ended early (timeout, broker failure,
/// failed task, Ctrl-C): the `error` and what was done so far, so that a
/// script always has one object to read. `job_id` and `total` appear once
/// known.
pub fn error_json(error: &str, progress: &Progress, elapsed: std::time::Duration) -> String {
    let (done, total) = progress.counts();
    let mut object = json!({
        "error": error,
        "done": done,
        "elapsed_s": elapsed.as_secs_f64(),
    });
    if let Some(job) = progress.job() {
        object["job_id"] = json!(job.as_str());
    }
    if let Some(total) = total {
        object["total"] = json!(total);
    }
    object.to_string()
}

/// Whether the command line asks for `--json` (before a `--` that ends the
/// flags), read from the raw arguments: flags that fail to parse still
/// get their JSON object.
pub fn json_requested(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter()
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json")
}

/// The gist of a flag error for `--json`: clap's first paragraph (without
/// its `error: ` and the usage that follows), on one line.
pub fn usage_error_text(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let first = rendered.trim().split("\n\n").next().unwrap_or_default();
    let first = first.strip_prefix("error:").unwrap_or(first);
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub enum Report {
    /// A finished sum job, and the `--random` seed if there was one.
    Sum {
        /// The job's report.
        report: SumReport,
        /// The seed of `--random`.
        seed: Option<u32>,
    },
    /// A finished download job.
    Download(DownloadSummary),
    /// `producer status`.
    Status(StatusReport),
    /// `producer jobs`.
    Jobs(Vec<crate::attach::JobListing>),
    /// `producer cancel`: the job cancelled.
    Cancelled(warren::JobId),
    /// `--detach`: the job submitted, for `producer attach`.
    Detached(warren::JobId),
}

impl Report {
    /// The process exit status: 0, or 1 when the job finished without an
    /// answer that can be printed exactly (overflow).
    pub fn exit_code(&self) -> u8 {
        match self {
            Report::Sum { report, .. } => u8::from(report.answer.overflow),
            Report::Download(summary) => u8::from(summary.tally().failed > 0),
            Report::Status(_) | Report::Jobs(_) | Report::Cancelled(_) | Report::Detached(_) => 0,
        }
    }

    /// Writes the stdout text and a newline: the bare answer, or one JSON
    /// object. A download job's failures are read back from its manifest
    /// lines as they are written, never all held at once.
    ///
    /// # Errors
    /// Writing to `out`, or reading the failures back.
    pub fn write_stdout(&self, json: bool, out: &mut impl Write) -> std::io::Result<()> {
        match self {
            Report::Download(summary) if json => download_json(summary, &mut *out)?,
            Report::Download(summary) => download_text(summary, &mut *out)?,
            other => out.write_all(other.stdout(json).as_bytes())?,
        }
        writeln!(out)
    }

    /// The stdout text: the bare answer, or one JSON object.
    pub fn stdout(&self, json: bool) -> String {
        match self {
            Report::Sum { report, .. } if !json => report.answer.text.clone(),
            Report::Sum { report, seed } => sum_json(report, *seed),
            Report::Jobs(jobs) => {
                if json {
                    serde_json::to_string(jobs).expect("a job list always serializes") // invariant: plain data
                } else {
                    crate::attach::jobs_table(jobs)
                }
            }
            Report::Cancelled(job) => format!("cancelled job {job}"),
            Report::Detached(job) if json => {
                json!({"job_id": job.as_str(), "detached": true}).to_string()
            }
            Report::Detached(job) => job.to_string(),
            Report::Status(report) => {
                if json {
                    serde_json::to_string(report).expect("a status report always serializes") // invariant: plain data
                } else {
                    report.table()
                }
            }
            Report::Download(_) => {
                let mut text = Vec::new();
                self.write_stdout(json, &mut text).map_or_else(
                    |e| e.to_string(),
                    |()| {
                        text.pop();
                        String::from_utf8_lossy(&text).into_owned()
                    },
                )
            }
        }
    }

    /// Lines for stderr: always the warnings; the summary unless `quiet`.
    pub fn notes(&self, quiet: bool) -> Vec<String> {
        let mut notes = Vec::new();
        match self {
            Report::Sum { report, seed } => {
                let answer = &report.answer;
                if answer.overflow {
                    notes.push(format!(
                        "error: the exact sum of these {} values is beyond float64's range \
                         (magnitude at least 2^1024); it is shown as {}",
                        answer.count, answer.text
                    ));
                }
                match answer.nonfinite {
                    Some(NonFinite::Nan) => notes.push(
                        "note: the sum is nan: the input holds NaN, or both +inf and -inf".into(),
                    ),
                    Some(_) => notes.push(format!(
                        "note: the sum is {}: the input holds infinities",
                        answer.text
                    )),
                    None => {}
                }
                if !quiet {
                    let seconds = report.elapsed.as_secs_f64();
                    let megabytes = answer.count as f64 * answer.dtype.itemsize() as f64 / 1e6;
                    notes.push(format!(
                        "summed {} {} values in {} chunk(s) on {} worker(s) in {:.3} s ({:.1} MB/s){}",
                        answer.count,
                        answer.dtype,
                        report.chunks,
                        report.workers.len(),
                        seconds,
                        megabytes / seconds.max(1e-9),
                        seed.map_or(String::new(), |s| format!(", seed {s}")),
                    ));
                }
            }
            Report::Download(_)
            | Report::Status(_)
            | Report::Jobs(_)
            | Report::Cancelled(_)
            | Report::Detached(_) => {}
        }
        notes
    }
}

/// A finished sum job as one JSON object.
fn sum_json(report: &SumReport, seed: Option<u32>) -> String {
    let mut object = json!({
        "job_id": report.job_id.as_str(),
        "sum": report.answer.text,
        "count": report.answer.count,
        "dtype": report.answer.dtype.name(),
        "chunks": report.chunks,
        "workers_seen": report.workers.len(),
        "workers": report.workers,
        "duplicates": report.duplicates,
        "elapsed_s": (report.elapsed.as_secs_f64() * 1e6).round() / 1e6,
    });
    if report.answer.dtype.is_float() {
        object["overflow"] = json!(report.answer.overflow);
        object["nonfinite"] = json!(report.answer.nonfinite);
    }
    if let Some(seed) = seed {
        object["seed"] = json!(seed);
    }
    if let Some(source) = &report.source {
        object["source"] = json!(source);
    }
    object.to_string()
}

/// A finished download job as one JSON object, its fields in the order of
/// `serde_json`'s maps (by name), as `json!` made it before the failures
/// were streamed.
#[derive(Serialize)]
struct DownloadJson<'a> {
    bytes: u64,
    elapsed_s: f64,
    failed: FailedJson<'a>,
    job_id: Option<&'a str>,
    manifest: Option<String>,
    out_dir: String,
    skipped: u64,
    succeeded: u64,
    workers_seen: usize,
}

/// The failed downloads, as JSON objects read back one at a time.
struct FailedJson<'a>(&'a Records);

impl Serialize for FailedJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut failed = serializer.serialize_seq(None)?;
        for record in self.0.failures() {
            let record = record.map_err(S::Error::custom)?;
            failed.serialize_element(&json!({
                "url": record.url,
                "path": record.path,
                "error": record.error,
            }))?;
        }
        failed.end()
    }
}

/// Writes a finished download job as one JSON object.
fn download_json(summary: &DownloadSummary, out: &mut impl Write) -> std::io::Result<()> {
    let tally = summary.tally();
    let object = DownloadJson {
        bytes: tally.bytes,
        elapsed_s: (summary.elapsed.as_secs_f64() * 1e6).round() / 1e6,
        failed: FailedJson(&summary.records),
        job_id: summary.job_id.as_ref().map(|j| j.as_str()),
        manifest: summary.manifest.as_ref().map(|m| m.display().to_string()),
        out_dir: summary.out_dir.display().to_string(),
        skipped: tally.skipped,
        succeeded: tally.ok,
        workers_seen: summary.workers.len(),
    };
    serde_json::to_writer(out, &object).map_err(std::io::Error::other)
}

/// Writes a finished download job as text: the counts, then the failures
/// grouped by reason.
fn download_text(summary: &DownloadSummary, out: &mut impl Write) -> std::io::Result<()> {
    let tally = summary.tally();
    write!(
        out,
        "downloaded {} file(s) ({} bytes), skipped {}, failed {} into {} in {:.2} s",
        tally.ok,
        tally.bytes,
        tally.skipped,
        tally.failed,
        summary.out_dir.display(),
        summary.elapsed.as_secs_f64()
    )?;
    let mut unreadable = None;
    let failures = summary.records.failures().map_while(|record| match record {
        Ok(record) => Some(record),
        Err(e) => {
            unreadable = Some(e);
            None
        }
    });
    let lines = failure_lines(failures.map(|r: ManifestRecord| {
        let reason = r.error.unwrap_or_else(|| "unknown error".into());
        (r.url, r.path, reason)
    }));
    if let Some(e) = unreadable {
        return Err(e);
    }
    for line in lines {
        write!(out, "\n{line}")?;
    }
    Ok(())
}

/// The text lines for failed downloads, given as (url, path, reason): one
/// line per reason, in order of first appearance, with its count and at
/// most [`URLS_SHOWN_PER_REASON`] of its URLs below it. Twenty downloads
/// that fail the same way are one problem, and read as one.
fn failure_lines<S: AsRef<str>>(failures: impl Iterator<Item = (S, S, S)>) -> Vec<String> {
    /// One reason: how many failed for it, and the first few of them.
    struct Group {
        reason: String,
        count: usize,
        shown: Vec<(String, String)>,
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for (url, path, reason) in failures {
        let index = match group_of.get(reason.as_ref()) {
            Some(&index) => index,
            None => {
                groups.push(Group {
                    reason: reason.as_ref().to_owned(),
                    count: 0,
                    shown: Vec::new(),
                });
                group_of.insert(reason.as_ref().to_owned(), groups.len() - 1);
                groups.len() - 1
            }
        };
        let group = &mut groups[index];
        group.count += 1;
        if group.shown.len() < URLS_SHOWN_PER_REASON {
            let shown = (url.as_ref().to_owned(), path.as_ref().to_owned());
            group.shown.push(shown);
        }
    }
    let mut lines = Vec::new();
    for group in groups {
        let reason = &group.reason;
        if let [(url, path)] = &group.shown[..]
            && group.count == 1
        {
            lines.push(format!("failed: {url} -> {path}: {reason}"));
            continue;
        }
        lines.push(format!("failed: {} URLs: {reason}", group.count));
        for (url, path) in &group.shown {
            lines.push(format!("  {url} -> {path}"));
        }
        if group.count > URLS_SHOWN_PER_REASON {
            lines.push(format!(
                "  and {} more (--json or --manifest lists every one)",
                group.count - URLS_SHOWN_PER_REASON
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn json_is_requested_by_a_flag_before_the_end_of_flags() {
        let args = |list: &[&str]| {
            list.iter()
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
        };
        assert!(json_requested(args(&[
            "producer", "sum", "--json", "--bogus"
        ])));
        assert!(!json_requested(args(&["producer", "sum", "--", "--json"])));
        assert!(!json_requested(args(&["producer", "sum", "--jsonx"])));
    }

    #[test]
    fn a_flag_error_is_one_line_without_usage() {
        let error =
            crate::Cli::try_parse_from(["producer", "sum", "--bogus", "--json"]).unwrap_err();
        assert_eq!(
            usage_error_text(&error),
            "unexpected argument '--bogus' found"
        );
        let error = crate::Cli::try_parse_from(["producer", "attach"]).unwrap_err();
        let text = usage_error_text(&error);
        assert!(
            text.starts_with("the following required arguments were not provided:")
                && text.contains("<JOB_ID>")
                && !text.contains('\n'),
            "{text}"
        );
    }

    #[test]
    fn failures_with_one_reason_are_one_line_with_a_count_and_a_few_urls() {
        let urls: Vec<(String, String)> = (0..20)
            .map(|i| (format!("http://h/{i}.bin"), format!("{i}.bin")))
            .collect();
        let mut failures: Vec<(&str, &str, &str)> = urls
            .iter()
            .map(|(url, path)| (url.as_str(), path.as_str(), "HTTP 404 Not Found"))
            .collect();
        failures.insert(3, ("http://h/x", "x", "no response within 30s"));
        let lines = failure_lines(failures.into_iter());
        assert_eq!(
            lines,
            [
                "failed: 20 URLs: HTTP 404 Not Found",
                "  http://h/0.bin -> 0.bin",
                "  http://h/1.bin -> 1.bin",
                "  http://h/2.bin -> 2.bin",
                "  http://h/3.bin -> 3.bin",
                "  http://h/4.bin -> 4.bin",
                "  and 15 more (--json or --manifest lists every one)",
                "failed: http://h/x -> x: no response within 30s",
            ]
        );
        let two = [("u1", "p1", "r"), ("u2", "p2", "r")];
        assert_eq!(
            failure_lines(two.into_iter()),
            ["failed: 2 URLs: r", "  u1 -> p1", "  u2 -> p2"]
        );
        assert!(failure_lines(std::iter::empty::<(&str, &str, &str)>()).is_empty());
    }

    #[test]
    fn a_download_summary_streams_the_same_json_and_text_as_one_built_whole() {
        use crate::download::manifest::{ItemStatus, ManifestWriter};
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ManifestWriter::create(None, dir.path()).unwrap();
        let record = |url: &str, status, error: Option<&str>| ManifestRecord {
            url: url.into(),
            path: url.rsplit('/').next().unwrap().into(),
            status,
            bytes: 5,
            sha256: None,
            http_status: Some(404),
            attempts: 1,
            error: error.map(str::to_owned),
            last_ok: None,
        };
        writer
            .record(
                2,
                &record("http://h/c", ItemStatus::Failed, Some("HTTP 404")),
            )
            .unwrap();
        writer
            .record(0, &record("http://h/a", ItemStatus::Ok, None))
            .unwrap();
        writer
            .record(
                1,
                &record("http://h/b", ItemStatus::Failed, Some("HTTP 404")),
            )
            .unwrap();
        writer
            .record(3, &record("http://h/d", ItemStatus::Skipped, None))
            .unwrap();
        writer.commit().unwrap();
        let summary = DownloadSummary {
            job_id: Some(warren::JobId::parse("j").unwrap()),
            records: writer.into_records(),
            out_dir: "/out".into(),
            manifest: None,
            workers: ["w1".to_owned()].into(),
            elapsed: std::time::Duration::from_millis(1500),
        };
        let report = Report::Download(summary);
        // What `json!` made of the whole summary before it was streamed.
        let whole = json!({
            "job_id": "j",
            "succeeded": 1,
            "failed": [
                {"url": "http://h/b", "path": "b", "error": "HTTP 404"},
                {"url": "http://h/c", "path": "c", "error": "HTTP 404"},
            ],
            "skipped": 1,
            "bytes": 5,
            "workers_seen": 1,
            "out_dir": "/out",
            "manifest": null,
            "elapsed_s": 1.5,
        });
        assert_eq!(report.stdout(true), whole.to_string());
        assert_eq!(
            report.stdout(false),
            "downloaded 1 file(s) (5 bytes), skipped 1, failed 2 into /out in 1.50 s\n\
             failed: 2 URLs: HTTP 404\n  http://h/b -> b\n  http://h/c -> c"
        );
        assert_eq!(report.exit_code(), 1);
    }
}
