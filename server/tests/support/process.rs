//! A child process that cannot outlive its test (shared with the e2e
//! crate, which includes this file and re-exports it).

use std::ops::{Deref, DerefMut};
use std::process::Child;

/// A child process, killed (SIGKILL) and reaped when this handle drops:
/// when the test ends, and also when it panics before stopping the process
/// itself. Reaches the [`Child`] through `Deref`.
#[allow(
    unreachable_pub,
    reason = "public for the e2e crate, which re-exports it; private in the server's tests"
)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Kills and reaps the process now; harmless if it exited already.
    #[allow(
        unreachable_pub,
        reason = "public for the e2e crate, which re-exports it; private in the server's tests"
    )]
    pub fn kill_and_reap(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}
