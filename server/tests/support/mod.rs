//! Helpers shared by the tests that run the server binary.

use std::process::{Command, Stdio};
use std::time::Duration;

use server::readiness::{Listening, wait_until_listening};

pub(crate) mod process;

pub(crate) use process::KillOnDrop;

/// Starts `command` (the server binary and its other arguments) on ports the
/// OS picks on 127.0.0.1 and returns once the server announced them: no
/// race for a port another test just took, no client racing the bind.
/// The process is killed when the returned handle drops.
/// Keep `server=info` in any `--log-filter` given.
pub(crate) fn start_listening(mut command: Command) -> (KillOnDrop, Listening) {
    command
        .args(["--bind", "127.0.0.1:0", "--metrics-bind", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(command.spawn().expect("start the server binary"));
    match wait_until_listening(&mut child, Duration::from_secs(30)) {
        Ok(listening) => (child, listening),
        Err(error) => panic!("{error}"),
    }
}
