//! A child process that cannot outlive its test.

use std::ops::{Deref, DerefMut};
use std::process::Child;

/// A child process, killed (SIGKILL) and reaped when this handle drops:
/// when the test ends, and also when it panics before stopping the process
/// itself. Reaches the [`Child`] through `Deref`; killing a process that
/// already exited (and was waited for) is harmless.
pub(crate) struct KillOnDrop(pub(crate) Child);

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
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
