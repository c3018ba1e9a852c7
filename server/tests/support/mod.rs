//! Helpers shared by the tests that run the server binary.

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// A UDP address on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A TCP address on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_tcp_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
