//! Progress bars for long phases (hidden when stderr is not a terminal or when quiet).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A step counter with a message slot for the latest loss.
pub fn bar(total: usize, phase: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    if std::env::var_os("DENSESSL_QUIET").is_some() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} [{elapsed_precise}] {bar:30} {pos}/{len} ETA {eta} {msg}")
            .expect("valid template"),
    );
    bar.set_prefix(phase.to_string());
    bar
}
