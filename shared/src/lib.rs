//! Code both sides of the wire link: the reliable-UDP transport, the link
//! simulator used by tests and the bot client, and (later) the game message
//! types and the connect-token format.

pub mod transport;
