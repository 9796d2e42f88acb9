//! Ctrl-C / SIGTERM stop training cleanly: the step in flight finishes, a checkpoint is saved,
//! the process exits. The handler is process-wide, so it forwards to the current run.

use std::sync::{Mutex, OnceLock};

use burn::train::Interrupter;

static CURRENT: OnceLock<Mutex<Option<Interrupter>>> = OnceLock::new();

/// Routes the next signals to `interrupter`.
pub fn route_signals_to(interrupter: &Interrupter) {
    let slot = CURRENT.get_or_init(|| {
        let _ = ctrlc::set_handler(|| {
            if let Some(Some(i)) = CURRENT.get().map(|m| m.lock().unwrap().clone()) {
                eprintln!("\nstopping: finishing the current step and saving a checkpoint…");
                i.stop(Some("interrupted by a signal"));
            }
        });
        Mutex::new(None)
    });
    *slot.lock().unwrap() = Some(interrupter.clone());
}
