//! Progress bars with rate and ETA, shown on stderr only when asked for (and drawn by
//! indicatif only when stderr is a terminal). Without the `progress` feature a bar is
//! never drawn; what a run logs through `tracing` is unchanged.

/// A progress bar: indicatif's with the `progress` feature, nothing without it.
#[derive(Debug, Clone)]
pub struct ProgressBar {
    #[cfg(feature = "progress")]
    bar: indicatif::ProgressBar,
}

/// A bar of `len` steps (unknown when `None`) drawn with `template` (indicatif's
/// syntax), hidden unless `show`.
#[cfg(feature = "progress")]
pub fn bar(show: bool, len: Option<u64>, template: &str) -> ProgressBar {
    use indicatif::{ProgressDrawTarget, ProgressStyle};
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = indicatif::ProgressBar::with_draw_target(len, target);
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    ProgressBar { bar }
}

/// No bar: the crate was built without the `progress` feature.
#[cfg(not(feature = "progress"))]
pub fn bar(_show: bool, _len: Option<u64>, _template: &str) -> ProgressBar {
    ProgressBar {}
}

impl ProgressBar {
    /// `n` more steps are done.
    pub fn inc(&self, n: u64) {
        #[cfg(feature = "progress")]
        self.bar.inc(n);
        #[cfg(not(feature = "progress"))]
        let _ = n;
    }

    /// `position` steps are done.
    pub fn set_position(&self, position: u64) {
        #[cfg(feature = "progress")]
        self.bar.set_position(position);
        #[cfg(not(feature = "progress"))]
        let _ = position;
    }

    /// The text of the template's `{prefix}`.
    pub fn set_prefix(&self, prefix: impl Into<std::borrow::Cow<'static, str>>) {
        #[cfg(feature = "progress")]
        self.bar.set_prefix(prefix);
        #[cfg(not(feature = "progress"))]
        let _ = prefix;
    }

    /// The text of the template's `{msg}`.
    pub fn set_message(&self, message: impl Into<std::borrow::Cow<'static, str>>) {
        #[cfg(feature = "progress")]
        self.bar.set_message(message);
        #[cfg(not(feature = "progress"))]
        let _ = message;
    }

    /// The work is done: the bar goes.
    pub fn finish_and_clear(&self) {
        #[cfg(feature = "progress")]
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    /// A hidden bar takes every update (with or without the `progress` feature).
    #[test]
    fn a_hidden_bar_takes_updates() {
        let bar = super::bar(false, Some(10), "{prefix} [{bar:10}] {pos}/{len} {msg}");
        bar.set_prefix("epoch 1/1");
        bar.set_position(3);
        bar.set_message(format!("loss {:.1}", 1.5));
        bar.inc(2);
        bar.finish_and_clear();
    }
}
