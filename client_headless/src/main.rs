//! The headless client.

fn main() {}
