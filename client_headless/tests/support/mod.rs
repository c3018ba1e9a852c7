//! Helpers shared by the end-to-end tests.
//!
//! Finding the server binary: Cargo only exposes `CARGO_BIN_EXE_*` for the
//! package's own binaries, so the tests look for `server` next to their own
//! executable's profile directory (`target/<profile>/deps/TEST-*` →
//! `target/<profile>/server`). If it is missing, they run
//! `cargo build -p server` with the same `CARGO_TARGET_DIR` first.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Command;

/// A free UDP port on 127.0.0.1.
pub(crate) fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A free TCP port on 127.0.0.1.
pub(crate) fn free_tcp_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `target/<profile>/server`, built on demand.
pub(crate) fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/load_e2e-HASH → target/<profile>
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let server = profile_dir.join(format!("server{}", std::env::consts::EXE_SUFFIX));
    if !server.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "server"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build -p server");
        assert!(status.success(), "cargo build -p server failed");
    }
    assert!(server.exists(), "no server binary at {}", server.display());
    server
}
