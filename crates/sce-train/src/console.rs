//! What the user sees on stderr: a progress bar while an epoch runs and one line per epoch.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Human-facing output; silent with `-q`. Machine-readable results go to stdout elsewhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct Console {
    pub quiet: bool,
}

impl Console {
    pub fn line(&self, text: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", text.as_ref());
        }
    }

    /// A bar over `len` items; drawn only on a terminal, hidden with `-q`.
    pub fn bar(&self, len: usize, prefix: String) -> ProgressBar {
        let target = if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(len as u64), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(prefix);
        bar.enable_steady_tick(Duration::from_millis(500));
        bar
    }

    /// A download progress callback for the data locator.
    pub fn download_progress(&self) -> impl FnMut(&str, u64, Option<u64>) + '_ {
        let mut bar: Option<(String, ProgressBar)> = None;
        move |url: &str, received: u64, total: Option<u64>| {
            if bar.as_ref().is_none_or(|(u, _)| u != url) {
                let b = if self.quiet {
                    ProgressBar::hidden()
                } else {
                    ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
                };
                b.set_style(
                    ProgressStyle::with_template(
                        "downloading {msg} {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .expect("valid template"),
                );
                b.set_message(url.to_string());
                self.line(format!("downloading {url}"));
                bar = Some((url.to_string(), b));
            }
            if let Some((_, b)) = &bar {
                b.set_position(received);
            }
        }
    }
}
