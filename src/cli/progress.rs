//! Progress display: the binary's implementation of [`s3bk::progress::Progress`], an indicatif
//! bar on stderr with files, bytes, throughput and ETA. Hidden when stderr is not a terminal
//! or with `--quiet`/`--json` (the caller decides; see `Ctx::progress`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use s3bk::progress::Progress;

/// Widest current-item text shown (in characters).
const ITEM_WIDTH: usize = 40;

/// An indicatif progress bar counting bytes, with file counts in its prefix.
pub struct Bar {
    bar: ProgressBar,
    files_done: AtomicU64,
    files_total: AtomicU64,
    unit: &'static str,
}

impl Bar {
    /// A bar drawn on stderr when `visible`, else a hidden one.
    pub fn new(visible: bool) -> Self {
        Self::with_unit(visible, "files")
    }

    /// Like [`Self::new`], counting `unit` (plural: `objects`, `packs`) instead of files.
    pub fn with_unit(visible: bool, unit: &'static str) -> Self {
        let bar = if visible {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {prefix} {wide_bar} {bytes}/{total_bytes} \
                 {binary_bytes_per_sec} ETA {eta} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            // `ProgressBar::hidden()`, but with a length so totals are kept.
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden())
        };
        Self { bar, files_done: AtomicU64::new(0), files_total: AtomicU64::new(0), unit }
    }

    fn update_prefix(&self) {
        let done = self.files_done.load(Ordering::Relaxed);
        let total = self.files_total.load(Ordering::Relaxed);
        self.bar.set_prefix(format!("{done}/{total} {}", self.unit));
    }

    /// Whether anything is drawn (so totals are worth estimating).
    pub fn is_visible(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Ends the bar and clears it from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Prints a line above the bar without garbling it.
    #[allow(dead_code, reason = "for commands that report while the bar runs")]
    pub fn println(&self, msg: impl AsRef<str>) {
        if self.bar.is_hidden() {
            eprintln!("{}", msg.as_ref());
        } else {
            self.bar.println(msg);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The tail of `item`, at most [`ITEM_WIDTH`] characters, marked with `…` when cut.
fn tail(item: &str) -> String {
    let n = item.chars().count();
    if n <= ITEM_WIDTH {
        return item.to_owned();
    }
    let rest: String = item.chars().skip(n - (ITEM_WIDTH - 1)).collect();
    format!("…{rest}")
}

impl Progress for Bar {
    fn add_total(&self, files: u64, bytes: u64) {
        if bytes > 0 {
            self.bar.inc_length(bytes);
        }
        if files > 0 {
            self.files_total.fetch_add(files, Ordering::Relaxed);
            self.update_prefix();
        }
    }

    fn advance(&self, files: u64, bytes: u64) {
        if bytes > 0 {
            self.bar.inc(bytes);
        }
        if files > 0 {
            self.files_done.fetch_add(files, Ordering::Relaxed);
            self.update_prefix();
        }
    }

    fn current(&self, item: &str) {
        if !self.bar.is_hidden() {
            self.bar.set_message(tail(item));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_bar_counts() {
        let b = Bar::new(false);
        b.add_total(2, 100);
        b.advance(1, 40);
        b.current("x");
        assert_eq!(b.files_done.load(Ordering::Relaxed), 1);
        assert_eq!(b.files_total.load(Ordering::Relaxed), 2);
        assert_eq!(b.bar.position(), 40);
        assert_eq!(b.bar.length(), Some(100));
    }

    #[test]
    fn tails_long_items() {
        let long = "a".repeat(100);
        assert_eq!(tail(&long).chars().count(), ITEM_WIDTH);
        assert_eq!(tail("short"), "short");
    }
}
