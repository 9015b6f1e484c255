//! Progress bars with rate and ETA, shown on stderr only when asked for (and drawn by
//! indicatif only when stderr is a terminal).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps (unknown when `None`) drawn with `template` (indicatif's
/// syntax), hidden unless `show`.
pub fn bar(show: bool, len: Option<u64>, template: &str) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(len, target);
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    bar
}
