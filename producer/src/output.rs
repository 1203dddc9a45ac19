//! The answer on stdout (bare, or one JSON object with `--json`), notes on
//! stderr, and the exit status that goes with them.

use std::collections::HashMap;

use serde_json::json;
use warren::exact::NonFinite;

use crate::download::DownloadSummary;
use crate::download::manifest::ItemStatus;
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
            Report::Download(summary) => {
                u8::from(summary.with_status(ItemStatus::Failed).next().is_some())
            }
            Report::Status(_) | Report::Jobs(_) | Report::Cancelled(_) | Report::Detached(_) => 0,
        }
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
            Report::Download(summary) if json => download_json(summary),
            Report::Download(summary) => download_text(summary),
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

/// The failed downloads as JSON objects.
fn failed_json(summary: &DownloadSummary) -> Vec<serde_json::Value> {
    summary
        .with_status(ItemStatus::Failed)
        .map(|r| json!({"url": r.url, "path": r.path, "error": r.error}))
        .collect()
}

/// A finished download job as one JSON object.
fn download_json(summary: &DownloadSummary) -> String {
    json!({
        "job_id": summary.job_id.as_ref().map(|j| j.as_str()),
        "succeeded": summary.with_status(ItemStatus::Ok).count(),
        "failed": failed_json(summary),
        "skipped": summary.with_status(ItemStatus::Skipped).count(),
        "bytes": summary.bytes(),
        "workers_seen": summary.workers.len(),
        "out_dir": summary.out_dir.display().to_string(),
        "manifest": summary.manifest.as_ref().map(|m| m.display().to_string()),
        "elapsed_s": (summary.elapsed.as_secs_f64() * 1e6).round() / 1e6,
    })
    .to_string()
}

/// A finished download job as text: the counts, then the failures grouped
/// by reason.
fn download_text(summary: &DownloadSummary) -> String {
    let mut lines = vec![format!(
        "downloaded {} file(s) ({} bytes), skipped {}, failed {} into {} in {:.2} s",
        summary.with_status(ItemStatus::Ok).count(),
        summary.bytes(),
        summary.with_status(ItemStatus::Skipped).count(),
        summary.with_status(ItemStatus::Failed).count(),
        summary.out_dir.display(),
        summary.elapsed.as_secs_f64()
    )];
    lines.extend(failure_lines(summary.with_status(ItemStatus::Failed).map(
        |r| {
            let reason = r.error.as_deref().unwrap_or("unknown error");
            (r.url.as_str(), r.path.as_str(), reason)
        },
    )));
    lines.join("\n")
}

/// The text lines for failed downloads, given as (url, path, reason): one
/// line per reason, in order of first appearance, with its count and at
/// most [`URLS_SHOWN_PER_REASON`] of its URLs below it. Twenty downloads
/// that fail the same way are one problem, and read as one.
fn failure_lines<'a>(failures: impl Iterator<Item = (&'a str, &'a str, &'a str)>) -> Vec<String> {
    let mut groups: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    for (url, path, reason) in failures {
        let index = *group_of.entry(reason).or_insert_with(|| {
            groups.push((reason, Vec::new()));
            groups.len() - 1
        });
        groups[index].1.push((url, path));
    }
    let mut lines = Vec::new();
    for (reason, items) in groups {
        if let [(url, path)] = items[..] {
            lines.push(format!("failed: {url} -> {path}: {reason}"));
            continue;
        }
        lines.push(format!("failed: {} URLs: {reason}", items.len()));
        for (url, path) in items.iter().take(URLS_SHOWN_PER_REASON) {
            lines.push(format!("  {url} -> {path}"));
        }
        if items.len() > URLS_SHOWN_PER_REASON {
            lines.push(format!(
                "  and {} more (--json or --manifest lists every one)",
                items.len() - URLS_SHOWN_PER_REASON
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
        assert!(failure_lines(std::iter::empty()).is_empty());
    }
}
