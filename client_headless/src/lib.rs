//! The headless client's library part: the `chaos` attacks, so that the
//! adversarial end-to-end tests (`tests/`, crate `e2e`) send the same
//! traffic from the same code ([`chaos::generators`]), and the open-file
//! limit raised as the bots raise it. The player and the load tester live
//! in the binary (`src/main.rs`).

pub mod chaos;
#[cfg(target_os = "linux")]
pub mod open_files;
