//! Progress bars while a workload runs (indicatif), and log lines that do not
//! tear them; plain lines on stderr when it is not a terminal (CI).

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The run's progress display.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    multi: MultiProgress,
}

impl Progress {
    /// Draws on stderr when it is a terminal.
    pub(crate) fn new() -> Self {
        Progress {
            multi: MultiProgress::new(),
        }
    }

    /// A bar counting to `total` (events, messages, seconds…).
    pub(crate) fn bar(&self, label: impl Into<String>, total: u64) -> ProgressBar {
        let style = ProgressStyle::with_template(
            "{prefix:<44} [{bar:30.cyan/blue}] {human_pos:>9}/{human_len:9} {per_sec:>12} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(style);
        bar.set_prefix(label.into());
        bar
    }

    /// A line above the bars (or on stderr).
    pub(crate) fn log(&self, line: impl AsRef<str>) {
        if self.multi.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            let _ = self.multi.println(line.as_ref());
        }
    }

    /// Removes a finished bar from the display.
    pub(crate) fn done(&self, bar: &ProgressBar) {
        bar.finish_and_clear();
        self.multi.remove(bar);
    }
}
