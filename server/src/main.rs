//! The dedicated game server.

fn main() {}
