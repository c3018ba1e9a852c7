//! Code both sides of the wire link: the reliable-UDP transport, the secure
//! connection layer (netcode.io 1.02), the two joined as endpoints, the UDP
//! I/O thread, and the seeded link simulator used by tests and by the bot
//! client's link conditioner.

#![cfg_attr(
    test,
    expect(
        clippy::disallowed_methods,
        reason = "unit tests anchor their virtual clocks at a real Instant"
    )
)]

pub mod chunks;
pub mod endpoint;
pub mod io;
pub mod keys;
pub mod movement;
pub mod netcode;
pub mod prefetch;
pub mod protocol;
pub mod sim;
pub mod transport;
