//! The netcode.io 1.02 secure connection layer.
