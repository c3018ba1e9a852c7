//! Parses arbitrary bytes (and their text) as a connect token: never panics,
//! and whatever parses re-encodes to a token that parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::netcode::ConnectToken;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = ConnectToken::from_bytes(data) {
        assert!(ConnectToken::from_bytes(&token.to_bytes()).is_ok());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ConnectToken::from_base64(text);
    }
});
