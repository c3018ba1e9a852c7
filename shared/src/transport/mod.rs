//! The reliable-UDP transport.
