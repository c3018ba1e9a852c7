//! The I/O edge: real UDP sockets and the wall clock around the sans-IO
//! stack. [`ServerIo`] runs a server endpoint on its own `net-io` thread and
//! talks to the game over bounded crossbeam channels (events through a
//! [`pipe`], which never makes the game wait on a send in progress),
//! reading and writing its socket in batches ([`batch`]).

#![expect(
    clippy::disallowed_methods,
    reason = "the I/O edge is where sockets are opened and clocks are read"
)]

pub mod batch;
mod client;
pub mod pipe;
pub mod priority;
mod server;
pub mod socket;

pub use client::{ClientSocket, MAX_READS_PER_PUMP, unmapped};
pub use server::{
    ClientId, ClientSummary, InboundEvents, IoStats, IoStatsSnapshot, MAX_SHUTDOWN_LINGER,
    NetCommand, NetEvent, NetSummary, ServerIo, ServerIoConfig, SpawnError,
};

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock seconds since the Unix epoch (connect-token expiry).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The operating system's cryptographic random generator (keys, nonces).
pub fn system_rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}
