//! The progress bar of long commands (`run`, `ab`): on standard error when it is a terminal,
//! through indicatif with the `cli` feature, and nothing without it.

#[cfg(feature = "cli")]
use std::io::IsTerminal;

/// A progress bar over `total` steps.
#[cfg(feature = "cli")]
pub type Progress = indicatif::ProgressBar;

/// A progress bar on standard error, hidden when it is not a terminal.
#[cfg(feature = "cli")]
pub fn progress(total: u64) -> Progress {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Without the `cli` feature: a progress bar that shows nothing.
#[cfg(not(feature = "cli"))]
#[derive(Debug, Clone, Copy)]
pub struct Progress;

#[cfg(not(feature = "cli"))]
impl Progress {
    /// Nothing.
    pub fn inc(&self, _: u64) {}
    /// Nothing.
    pub fn set_message(&self, _: impl Into<std::borrow::Cow<'static, str>>) {}
    /// Nothing.
    pub fn finish_and_clear(&self) {}
}

/// A progress bar that shows nothing (without the `cli` feature).
#[cfg(not(feature = "cli"))]
pub fn progress(_total: u64) -> Progress {
    Progress
}
