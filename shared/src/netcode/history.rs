//! What a client remembers of the connect tokens it used: its own numbering
//! under each (so that no nonce repeats when it comes back to a token), and
//! which of the server's numbering belongs to attempts that are over (so
//! that their packets, replayed, are not taken for this attempt's).

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::CONNECT_TOKEN_NONCE_BYTES;

/// Tokens a client remembers; connecting with one it has forgotten starts
/// its numbering at the token's age (see
/// [`SEQUENCES_PER_SECOND`](super::SEQUENCES_PER_SECOND)), past what an
/// earlier use could have reached.
const REMEMBERED_TOKENS: usize = 8;
/// Blocks of ended sessions remembered per token.
const REMEMBERED_BLOCKS: usize = 32;
/// Server sequences from here up are server-wide: denials sent before the
/// server kept any state for the client (see the module docs of `netcode`).
const SERVER_WIDE: u64 = 1 << 63;

/// No block (a client not connected).
pub(super) const NO_BLOCK: u32 = u32::MAX;

/// The block of a server sequence below [`SERVER_WIDE`]: a server numbers
/// each handshake with a token, and the session it leads to, in a block of
/// its own (`sequence >> 32`). Block 0 is also where servers that number
/// every session from zero (the reference implementation) are, so it is
/// never taken as an earlier session's.
pub(super) fn block_of(sequence: u64) -> u32 {
    u32::try_from(sequence >> 32).unwrap_or(NO_BLOCK)
}

/// The block the rest of a handshake, and its session, is numbered in,
/// from its challenge's `sequence`: the challenge's own (ours numbers
/// all of a handshake in one block), or block 0 for a challenge numbered
/// server-wide (a reference server's, whose sessions count from zero).
pub(super) fn handshake_block(sequence: u64) -> u32 {
    if sequence >= SERVER_WIDE {
        0
    } else {
        block_of(sequence)
    }
}

struct TokenUse {
    nonce: [u8; CONNECT_TOKEN_NONCE_BYTES],
    /// The client's next sequence under the token's key (saved when the
    /// client moves to another token).
    next_sequence: u64,
    /// Blocks of sessions with the token that ended, or of handshakes a
    /// denial ended: the server never numbers anything in them again.
    ended_blocks: VecDeque<u32>,
    /// Per server, the newest server-wide denial taken: a server numbers
    /// them with one counter that only goes up while it runs. A restarted
    /// server starts it again (ours at a random point above 2^63, a
    /// reference server at 2^63 itself), so with this token its denials
    /// may then (a reference server's: will) fall below the floor and go
    /// unheard: the client times out instead of being told the server is
    /// full.
    denial_floors: Vec<(SocketAddr, u64)>,
}

/// The tokens a client used, newest first; the first is the current one.
#[derive(Default)]
pub(super) struct TokenHistory {
    uses: VecDeque<TokenUse>,
}

impl TokenHistory {
    /// Makes the token with `nonce` the current one and returns where its
    /// numbering goes on: where it stopped if remembered, and at least
    /// `fresh` (see `Client::connect`); `next_sequence` is where the
    /// current token's stopped.
    pub(super) fn switch_to(
        &mut self,
        nonce: [u8; CONNECT_TOKEN_NONCE_BYTES],
        next_sequence: u64,
        fresh: u64,
    ) -> u64 {
        if let Some(current) = self.uses.front_mut() {
            current.next_sequence = next_sequence;
        }
        let known = self.uses.iter().position(|u| u.nonce == nonce);
        let token = match known.and_then(|at| self.uses.remove(at)) {
            Some(token) => token,
            None => {
                self.uses.truncate(REMEMBERED_TOKENS - 1);
                TokenUse {
                    nonce,
                    next_sequence: 0,
                    ended_blocks: VecDeque::new(),
                    denial_floors: Vec::new(),
                }
            }
        };
        let next = token.next_sequence.max(fresh);
        self.uses.push_front(token);
        next
    }

    /// Whether a packet numbered `sequence` from `server` may be of the
    /// current attempt (checked before it is decrypted): in the block of
    /// the handshake whose challenge was taken (`handshake_block`, see
    /// [`handshake_block`]); before a challenge, in none of the token's
    /// ended sessions' blocks (of this process: a program run again
    /// remembers none, and only the challenge's block tells its attempt's
    /// packets from an earlier run's, when the challenge taken is this
    /// attempt's); and, for a `denial`, not a
    /// server-wide one at or below one taken before. (Other packets
    /// numbered server-wide are a reference server's challenges, from a
    /// counter that starts over with the server: no floor holds for them.)
    pub(super) fn admits(
        &self,
        server: SocketAddr,
        sequence: u64,
        denial: bool,
        handshake_block: u32,
    ) -> bool {
        let Some(token) = self.uses.front() else {
            return false;
        };
        if sequence >= SERVER_WIDE {
            return !denial
                || token
                    .denial_floors
                    .iter()
                    .find(|(from, _)| *from == server)
                    .is_none_or(|&(_, floor)| sequence > floor);
        }
        let block = block_of(sequence);
        if handshake_block != NO_BLOCK {
            return block == handshake_block;
        }
        block == 0 || !token.ended_blocks.contains(&block)
    }

    /// An authentic denial numbered `sequence` from `server` was taken: the
    /// handshake it answered is over on the server too.
    pub(super) fn denied(&mut self, server: SocketAddr, sequence: u64) {
        let Some(token) = self.uses.front_mut() else {
            return;
        };
        if sequence < SERVER_WIDE {
            Self::ended(token, block_of(sequence));
            return;
        }
        match token
            .denial_floors
            .iter_mut()
            .find(|(from, _)| *from == server)
        {
            Some((_, floor)) => *floor = sequence,
            None => token.denial_floors.push((server, sequence)),
        }
    }

    /// The current token's session numbered in `block` is over.
    pub(super) fn session_ended(&mut self, block: u32) {
        if let Some(token) = self.uses.front_mut() {
            Self::ended(token, block);
        }
    }

    fn ended(token: &mut TokenUse, block: u32) {
        if block == 0 || block == NO_BLOCK || token.ended_blocks.contains(&block) {
            return;
        }
        if token.ended_blocks.len() == REMEMBERED_BLOCKS {
            token.ended_blocks.pop_front();
        }
        token.ended_blocks.push_back(block);
    }
}
