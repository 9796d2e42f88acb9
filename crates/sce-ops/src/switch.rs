//! A process-wide choice between two implementations, set once at start-up (by the binary, from
//! what the device computes or from an environment variable) and read at every call.

use std::sync::atomic::{AtomicBool, Ordering};

pub struct Switch<T: 'static> {
    second: AtomicBool,
    values: [T; 2],
}

impl<T: Copy + PartialEq> Switch<T> {
    /// A switch set to `first` until [`set`](Self::set) says otherwise.
    pub const fn new(first: T, second: T) -> Self {
        Self {
            second: AtomicBool::new(false),
            values: [first, second],
        }
    }

    pub fn set(&self, value: T) {
        self.second.store(value == self.values[1], Ordering::SeqCst);
    }

    pub fn get(&self) -> T {
        self.values[usize::from(self.second.load(Ordering::SeqCst))]
    }
}
