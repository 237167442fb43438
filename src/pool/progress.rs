//! The opt-in progress bar for long `map` and `imap` calls (cargo feature `progress`).

/// A progress bar on stderr, or nothing when the feature is off or the bar was not asked for.
#[derive(Clone, Debug, Default)]
pub(crate) struct Progress {
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar for `total` items (`None`: unknown length), if `enabled`.
    #[allow(unused_variables)]
    pub(crate) fn new(enabled: bool, total: Option<u64>) -> Self {
        #[cfg(feature = "progress")]
        {
            if enabled {
                let bar = match total {
                    Some(n) => indicatif::ProgressBar::new(n),
                    None => indicatif::ProgressBar::no_length(),
                };
                let style = indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar}] {pos}/{len} ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                bar.set_style(style);
                return Progress { bar: Some(bar) };
            }
        }
        Progress::default()
    }

    /// `n` more items are done.
    #[allow(unused_variables)]
    pub(crate) fn advance(&self, n: usize) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
    }

    /// The work is over.
    pub(crate) fn finish(&self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
