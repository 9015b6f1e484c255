//! The download's progress bar: indicatif's with the `progress` feature (drawn only
//! when stderr is a terminal), nothing without it.

/// A bar of a file's bytes, hidden unless asked for.
pub(crate) struct Bar {
    #[cfg(feature = "progress")]
    bar: indicatif::ProgressBar,
}

impl Bar {
    /// A bar for `name`'s `total` bytes (unknown when `None`), `position` of them
    /// already here; hidden unless `show`.
    #[cfg(feature = "progress")]
    pub(crate) fn new(show: bool, total: Option<u64>, name: String, position: u64) -> Self {
        use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
        let target = if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(total, target);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("a valid progress template")
            .progress_chars("=> "),
        );
        bar.set_message(name);
        bar.set_position(position);
        Self { bar }
    }

    /// No bar: the crate was built without the `progress` feature.
    #[cfg(not(feature = "progress"))]
    pub(crate) fn new(_show: bool, _total: Option<u64>, _name: String, _position: u64) -> Self {
        Self {}
    }

    /// `n` more bytes arrived.
    pub(crate) fn inc(&self, n: u64) {
        #[cfg(feature = "progress")]
        self.bar.inc(n);
        #[cfg(not(feature = "progress"))]
        let _ = n;
    }

    /// The file is complete: the bar goes.
    pub(crate) fn finish(&self) {
        #[cfg(feature = "progress")]
        self.bar.finish_and_clear();
    }
}
