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

/// Runs `f` with the panic hook muted: a backend panic that `f` catches becomes a failed check
/// or probe in a report, or a fallback at start-up, not a message and backtrace on stderr.
pub(crate) fn with_panic_messages_silenced<T>(f: impl FnOnce() -> T) -> T {
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = f();
    std::panic::set_hook(previous_hook);
    result
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::with_panic_messages_silenced;

    thread_local! {
        /// Panics seen by the test's hook on this thread only: other tests run beside it.
        static HOOK_CALLS: Cell<usize> = const { Cell::new(0) };
    }

    fn caught_panic() -> bool {
        catch_unwind(AssertUnwindSafe(|| panic!("a backend kernel failed"))).is_err()
    }

    // The panic hook is global: no other unit test of this crate sets it, so swapping it here
    // does not race with them.
    #[test]
    fn a_caught_panic_is_not_reported_inside_and_the_hook_is_restored_after() {
        let outer = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| HOOK_CALLS.with(|c| c.set(c.get() + 1))));

        let value = with_panic_messages_silenced(|| {
            assert!(caught_panic());
            7
        });
        let muted_calls = HOOK_CALLS.with(Cell::get);
        assert!(caught_panic());
        let restored_calls = HOOK_CALLS.with(Cell::get);

        std::panic::set_hook(outer);
        assert_eq!(value, 7);
        assert_eq!(muted_calls, 0, "the muted hook must not see the panic");
        assert_eq!(
            restored_calls, 1,
            "the previous hook must be back afterwards"
        );
    }
}
