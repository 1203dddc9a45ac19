//! What the user sees on stderr while a job runs: a progress bar (chunks
//! done of total, throughput, ETA) and warnings printed above it.
//!
//! The bar is hidden when stderr is not a terminal or with `--quiet`;
//! warnings are always shown. The answer itself goes to stdout, elsewhere.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use warren::JobId;

/// The progress display of one job.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
    visible: bool,
    /// `--quiet`: no notes.
    quiet: bool,
    /// The running job, once it has an id: what a run that ends early
    /// reports with `--json`.
    job: Arc<OnceLock<JobId>>,
    /// Tasks finished, kept apart from the bar: finishing the bar fills it.
    done: Arc<AtomicU64>,
}

impl Progress {
    /// A display on stderr, drawn only if stderr is a terminal and `quiet` is
    /// off.
    pub fn new(quiet: bool) -> Self {
        let visible = !quiet && std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(
            None,
            if visible {
                ProgressDrawTarget::stderr_with_hz(10)
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        Progress {
            bar,
            visible,
            quiet,
            job: Arc::default(),
            done: Arc::default(),
        }
    }

    /// A display that never draws (tests, library use).
    pub fn hidden() -> Self {
        Progress {
            bar: ProgressBar::hidden(),
            visible: false,
            quiet: true,
            job: Arc::default(),
            done: Arc::default(),
        }
    }

    /// Starts the bar from zero. `total_tasks` is `None` when the input
    /// size is unknown (text, stdin): a spinner counts up instead. A
    /// producer that carries its job on after losing the broker starts it
    /// again, then advances it by what its job's record holds.
    pub fn start(&self, unit: &str, total_tasks: Option<u64>) {
        self.bar.set_position(0);
        self.done.store(0, Ordering::Relaxed);
        let template = match total_tasks {
            Some(total) => {
                self.bar.set_length(total);
                format!(
                    "{{spinner}} [{{elapsed_precise}}] [{{wide_bar}}] {{pos}}/{{len}} {unit} \
                     {{msg}} ETA {{eta}}"
                )
            }
            None => format!("{{spinner}} [{{elapsed_precise}}] {{pos}} {unit} {{msg}}"),
        };
        let style = ProgressStyle::with_template(&template)
            .expect("the template is a constant and valid") // invariant: fixed template
            .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.enable_steady_tick(Duration::from_millis(100));
    }

    /// Sets the total once it becomes known.
    pub fn set_total(&self, total_tasks: u64) {
        self.bar.set_length(total_tasks);
    }

    /// Records finished tasks.
    pub fn advance(&self, tasks: u64) {
        self.bar.inc(tasks);
        self.done.fetch_add(tasks, Ordering::Relaxed);
    }

    /// Sets the text after the counter (throughput, workers, waiting).
    pub fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }

    /// Prints a warning above the bar (or plainly when it is hidden).
    pub fn warn(&self, message: &str) {
        if self.visible {
            self.bar.println(format!("warning: {message}"));
        } else {
            eprintln!("warning: {message}");
        }
    }

    /// Prints a note above the bar (or plainly when it is hidden), unless
    /// `--quiet`.
    pub fn note(&self, message: &str) {
        if self.quiet {
        } else if self.visible {
            self.bar.println(message);
        } else {
            eprintln!("{message}");
        }
    }

    /// Records the id of the job being run (the first one set stays).
    pub fn set_job(&self, job: &JobId) {
        let _ = self.job.set(job.clone());
    }

    /// The job's id, once it has one.
    pub fn job(&self) -> Option<&JobId> {
        self.job.get()
    }

    /// Tasks finished so far, and the total once it is known.
    pub fn counts(&self) -> (u64, Option<u64>) {
        (self.done.load(Ordering::Relaxed), self.bar.length())
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn a_restarted_bar_counts_from_zero_so_a_reattached_job_is_not_counted_twice() {
        let progress = Progress::hidden();
        progress.start("chunks", Some(100));
        progress.advance(60);
        // Carried on from a record holding 50 answered tasks.
        progress.start("chunks", None);
        progress.advance(50);
        assert_eq!(progress.counts().0, 50);
    }
}
