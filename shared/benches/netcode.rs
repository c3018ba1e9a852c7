//! Placeholder, replaced by the real bench below.
fn main() {}
