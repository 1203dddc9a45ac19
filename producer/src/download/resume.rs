//! A download job that outlives its producer: what its record keeps, and
//! `producer attach` carrying it on.
//!
//! The record's [`DownloadJobSpec`] holds what the first run decided
//! before it published anything: where the lists are (each pinned by size
//! and modification time, so a changed list is refused), the settings that
//! change outcomes, and the plan itself (which entries to fetch and how),
//! because the output directory has changed since: files were placed. The
//! attacher reads the lists again (naming is deterministic), takes the
//! plan from the record, and never plans again.
//!
//! A [`DownloadCheckpoint`] holds the tasks answered and how many bytes of
//! the manifest's lines record them (synced before it is saved). The
//! attacher cuts the lines back to that length, counts them again, and
//! publishes every task the checkpoint does not answer, unless it counts
//! it as published (a job submitted with `--detach`, not collected yet);
//! replies still in the reply queue settle what they can, and the new
//! tasks the rest (see `DownloadCollector::resumed`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use warren::BrokerConfig;
use warren::protocol::{DownloadLimits, FileRoute, VersionPin};

use super::manifest::{ManifestRecord, ManifestWriter, Verified};
use super::plan::Plan;
use super::urls::UrlList;
use super::{DownloadConfig, DownloadSummary, Run, Start, UrlInput};
use crate::durable::JobRecord;
use crate::error::{Error, Result};
use crate::input::Source;
use crate::job::JobSession;
use crate::local::LocalPlan;
use crate::progress::Progress;
use crate::sum::RunLimits;

/// One input of a download job, as its record keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub(crate) enum ListedInput {
    /// A list file, by absolute path, with its size and modification time
    /// when the job started.
    List { path: PathBuf, pin: VersionPin },
    /// A list read from stdin: gone once read, so the job cannot resume.
    Stdin,
    /// A URL given on the command line.
    Url { url: String },
}

/// What resuming a download job needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DownloadJobSpec {
    inputs: Vec<ListedInput>,
    /// The output directory, canonical.
    out_dir: PathBuf,
    /// `--manifest`, absolute, and as given (the summary shows it so).
    manifest: Option<PathBuf>,
    manifest_as_given: Option<PathBuf>,
    /// The file the manifest's lines go to (its partial file, or the
    /// job's records file), and its length before the first task.
    lines: PathBuf,
    lines_start: u64,
    delivery: FileRoute,
    overwrite: bool,
    fsync: bool,
    limits: DownloadLimits,
    max_in_flight: usize,
    /// Slots of the entries to fetch, as `[start, end)` ranges: task `i`
    /// is the `i`-th slot. `u32`, as the plan's: a list holds no more.
    to_fetch: Vec<(u32, u32)>,
    /// Tasks whose file may replace other content at its name.
    replace: Vec<(u32, u32)>,
    /// By slot: what warren last verified at the name.
    last_ok: Vec<(usize, Verified)>,
}

/// A download job's checkpoint, as its record keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DownloadCheckpoint {
    /// The answered tasks, as `[start, end)` ranges.
    pub(crate) answered: Vec<(u64, u64)>,
    /// Bytes of the manifest's lines that record them (and the entries
    /// decided before the first task).
    pub(crate) manifest_bytes: u64,
    /// Downloads failed so far.
    pub(crate) failures: u64,
    /// Tasks `0..published` are on the broker (their messages confirmed)
    /// and no producer has taken a reply of theirs: one not answered still
    /// has its message or its reply there, and is not published again.
    /// Only `--detach` saves more than 0 (see `DownloadCollector::resumed`).
    #[serde(default)]
    pub(crate) published: u64,
    pub(crate) workers: BTreeSet<String>,
}

/// Pins every list file of `inputs` (before it is read), for the job's
/// record.
///
/// # Errors
/// [`Error::Input`]-like failures to open a list, as reading it would.
pub(crate) fn pin_inputs(inputs: &[UrlInput]) -> Result<Vec<ListedInput>> {
    inputs
        .iter()
        .map(|input| {
            Ok(match input {
                UrlInput::List(Source::Stdin) => ListedInput::Stdin,
                UrlInput::List(Source::File(path)) => {
                    let path = std::path::absolute(path).map_err(|e| read_error(path, e))?;
                    let pin = pin(&path)?;
                    ListedInput::List { path, pin }
                }
                UrlInput::Url(url) => ListedInput::Url { url: url.clone() },
            })
        })
        .collect()
}

fn pin(path: &Path) -> Result<VersionPin> {
    let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    warren::source::file_pin(&file).map_err(|e| read_error(path, e))
}

fn read_error(path: &Path, source: std::io::Error) -> Error {
    Error::Read {
        input: path.display().to_string(),
        source,
    }
}

impl DownloadJobSpec {
    /// The record's spec of a new job with these settings and `plan`,
    /// whose manifest lines so far are in `manifest`.
    pub(crate) fn new(
        config: &DownloadConfig,
        inputs: Vec<ListedInput>,
        out_dir: &Path,
        plan: &Plan,
        manifest: &ManifestWriter,
    ) -> Result<DownloadJobSpec> {
        let manifest_path = match &config.manifest {
            Some(path) => Some(std::path::absolute(path).map_err(|e| read_error(path, e))?),
            None => None,
        };
        // Absolute, so that `attach` finds it from any directory.
        let lines = match &manifest_path {
            Some(path) => super::manifest::partial_path(path),
            None => manifest
                .lines_path()
                .expect("a job that outlives its producer writes its lines to a named file") // invariant: ManifestWriter::create_for_job
                .to_owned(),
        };
        // Task numbers fit in `u32`: there are no more than slots.
        let replaced = (0u32..).zip(&plan.replace).filter(|(_, r)| **r);
        let mut last_ok: Vec<(usize, Verified)> =
            plan.last_ok.iter().map(|(s, v)| (*s, v.clone())).collect();
        last_ok.sort_unstable_by_key(|(slot, _)| *slot);
        Ok(DownloadJobSpec {
            inputs,
            out_dir: out_dir.to_owned(),
            manifest: manifest_path,
            manifest_as_given: config.manifest.clone(),
            lines,
            lines_start: manifest.written(),
            delivery: config.delivery,
            overwrite: config.overwrite,
            fsync: config.fsync,
            limits: config.limits,
            max_in_flight: config.max_in_flight,
            to_fetch: ranges(plan.to_fetch.iter().copied()),
            replace: ranges(replaced.map(|(task, _)| task)),
            last_ok,
        })
    }

    /// The output directory, when the workers store files straight into
    /// it (`--shared`).
    pub(crate) fn shared_dir(&self) -> Option<&Path> {
        (self.delivery == FileRoute::Shared).then_some(self.out_dir.as_path())
    }

    /// The settings of the job, with this run's limits.
    fn config(&self, limits: RunLimits) -> DownloadConfig {
        let inputs = self
            .inputs
            .iter()
            .map(|input| match input {
                ListedInput::List { path, .. } => UrlInput::List(Source::File(path.clone())),
                ListedInput::Stdin => UrlInput::List(Source::Stdin),
                ListedInput::Url { url } => UrlInput::Url(url.clone()),
            })
            .collect();
        DownloadConfig {
            inputs,
            out_dir: self.out_dir.clone(),
            delivery: self.delivery,
            manifest: self.manifest.clone(),
            overwrite: self.overwrite,
            fsync: self.fsync,
            limits: self.limits,
            max_in_flight: self.max_in_flight,
            timeout: limits.timeout,
            stall_timeout: limits.stall_timeout,
            job_ttl: std::time::Duration::ZERO,
            detach: false,
        }
    }

    /// Checks that every list is the one the job started with.
    fn check_lists(&self, job: &str) -> Result<()> {
        for input in &self.inputs {
            match input {
                ListedInput::List { path, pin: pinned } => {
                    if pin(path)? != *pinned {
                        return Err(Error::InputChanged {
                            input: path.display().to_string(),
                        });
                    }
                }
                ListedInput::Stdin => {
                    return Err(Error::CannotResume {
                        job: job.to_owned(),
                        reason: "its URL list came from stdin, which cannot be read again; \
                                 run the job again"
                            .into(),
                    });
                }
                ListedInput::Url { .. } => {}
            }
        }
        Ok(())
    }

    /// The first run's plan for `named`, as the record keeps it.
    fn plan(&self, named: UrlList, job: &str) -> Result<Plan> {
        // Sized at once, as `Plan::new` does: a long list's vector never
        // grows by copying.
        let tasks = self
            .to_fetch
            .iter()
            .map(|&(s, e)| e.saturating_sub(s) as usize);
        let mut to_fetch = Vec::with_capacity(tasks.sum());
        to_fetch.extend(self.to_fetch.iter().flat_map(|&(s, e)| s..e));
        let mut replace = vec![false; to_fetch.len()];
        for task in self.replace.iter().flat_map(|&(s, e)| s..e) {
            if let Some(slot) = replace.get_mut(task as usize) {
                *slot = true;
            }
        }
        if to_fetch.iter().any(|&slot| slot as usize >= named.len()) {
            return Err(Error::CannotResume {
                job: job.to_owned(),
                reason: "its URL lists no longer name the files it was fetching".into(),
            });
        }
        Ok(Plan {
            named: std::sync::Arc::new(named),
            to_fetch: std::sync::Arc::new(to_fetch),
            last_ok: self.last_ok.iter().cloned().collect(),
            replace,
        })
    }
}

/// Consecutive values as `[start, end)` ranges.
fn ranges(values: impl Iterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for value in values {
        match ranges.last_mut() {
            Some((_, end)) if *end == value => *end += 1,
            _ => ranges.push((value, value + 1)),
        }
    }
    ranges
}

/// Carries on a download job another producer started, from its record;
/// the session has already taken the job's attach lock.
///
/// # Errors
/// As `download::run`, and [`Error::CannotResume`] or
/// [`Error::InputChanged`] when the lists are not the job's.
pub(crate) async fn resume(
    (broker, local): (&BrokerConfig, &LocalPlan),
    session: JobSession,
    record: &JobRecord,
    spec: &DownloadJobSpec,
    limits: RunLimits,
    progress: &Progress,
    shutdown: CancellationToken,
) -> Result<DownloadSummary> {
    let started = Instant::now()
        .checked_sub(record.age())
        .unwrap_or_else(Instant::now);
    let config = spec.config(limits);
    let prepared = prepare(&session, record, spec, &config, progress, &shutdown).await;
    let (plan, mut manifest, checkpoint) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            session.detach().await;
            return Err(e);
        }
    };
    tracing::info!(job_id = %record.job, "download job resumed");
    let run = Run {
        broker,
        config: &config,
        local,
        progress,
        shutdown: &shutdown,
        started,
        out_dir: &spec.out_dir,
    };
    let start = Start::Resumed(Box::new(session), checkpoint);
    let fetched = super::fetch_missing(&run, &plan, &mut manifest, start).await;
    drop(plan);
    let mut summary = super::conclude(&run, manifest, fetched).await?;
    summary.manifest.clone_from(&spec.manifest_as_given);
    Ok(summary)
}

/// Reads the lists again, checked against the record, and takes up the
/// manifest's lines where the checkpoint left them.
async fn prepare(
    session: &JobSession,
    record: &JobRecord,
    spec: &DownloadJobSpec,
    config: &DownloadConfig,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Result<(Plan, ManifestWriter, DownloadCheckpoint)> {
    let job = record.job.to_string();
    let checkpoint = match &record.checkpoint {
        Some(state) => serde_json::from_value(state.clone()).map_err(|e| Error::BadRecord {
            queue: session.topology.job_queue(&record.job),
            reason: format!("its download checkpoint: {e}"),
        })?,
        None => DownloadCheckpoint {
            manifest_bytes: spec.lines_start,
            ..DownloadCheckpoint::default()
        },
    };
    spec.check_lists(&job)?;
    let named = super::read_urls(config, progress, shutdown).await?;
    // Failed lines are read back in list order: each line's place.
    let places = named.places();
    let place_of = |r: &ManifestRecord| places.find(&r.url, &r.path);
    let manifest = ManifestWriter::reopen(
        config.manifest.as_deref(),
        &spec.lines,
        checkpoint.manifest_bytes,
        place_of,
    )?;
    drop(places);
    let plan = spec.plan(named, &job)?;
    Ok((plan, manifest, checkpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_slots_are_kept_as_ranges() {
        assert_eq!(
            ranges([0, 1, 2, 5, 6, 9].into_iter()),
            [(0, 3), (5, 7), (9, 10)]
        );
        assert!(ranges(std::iter::empty()).is_empty());
    }

    #[test]
    fn a_checkpoint_without_published_counts_no_task_as_published() {
        // As saved before `--detach` existed for downloads: every task not
        // answered goes out again.
        let saved = serde_json::json!({
            "answered": [[0, 2]], "manifest_bytes": 10, "failures": 0, "workers": []
        });
        let checkpoint: DownloadCheckpoint = serde_json::from_value(saved).unwrap();
        assert_eq!(checkpoint.published, 0);
        assert_eq!(checkpoint.answered, [(0, 2)]);
    }
}
