//! Code both sides of the wire link: the reliable-UDP transport, the secure
//! connection layer (netcode.io 1.02) and the seeded link simulator used by
//! tests and by the bot client's link conditioner.

pub mod netcode;
pub mod sim;
pub mod transport;
