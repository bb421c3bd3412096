//! Progress on a terminal for long work (key generation, protection, evaluation, benchmark):
//! indicatif bars, hidden when stderr is not a terminal or with `--quiet`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

pub struct Ui {
    visible: bool,
}

impl Ui {
    pub fn new(quiet: bool) -> Self {
        Self {
            visible: !quiet && std::io::stderr().is_terminal(),
        }
    }

    fn target(&self) -> ProgressDrawTarget {
        if self.visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        }
    }

    /// A bar over `len` steps.
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), self.target());
        bar.set_style(
            ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed} (eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar
    }

    /// A spinner for work of unknown length; its message names the stage.
    pub fn spinner(&self, what: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(None, self.target());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
        );
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}

/// The library's progress reports shown on a bar or spinner.
pub struct Shown(pub ProgressBar);

impl hedge::progress::Progress for Shown {
    fn stage(&self, what: &str) {
        self.0.set_message(what.to_string());
    }

    fn total(&self, steps: u64) {
        self.0.set_length(steps);
        self.0.set_position(0);
    }

    fn advance(&self, steps: u64) {
        self.0.inc(steps);
    }
}
