//! The chat room: validation, rate limits, offences and routing, as plain
//! Rust keyed by account id. The ECS systems in the parent module only
//! translate between it and the network.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use glam::Vec2;
use shared::protocol::chat::{
    ChatKind, ChatLine, ChatLineBody, ChatRejectReason, ChatRejected, ChatScope,
};
use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use super::ChatConfig;

/// The display name of system lines.
pub const SYSTEM_NAME: &str = "server";

/// What the room wants sent or done after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatOutput {
    /// Deliver a line to one member. The recipients of one message share
    /// its body (one allocation per message, not per recipient, and the
    /// network encodes it once).
    Line {
        /// The recipient's account.
        to: u64,
        /// Its sequence number for this line.
        seq: u64,
        /// The send this answers, on the speaker's own copy.
        reply_to: Option<u32>,
        /// What every recipient of the message gets.
        line: Arc<ChatLineBody>,
    },
    /// Tell a member their message was refused.
    Rejected {
        /// The sender's account.
        to: u64,
        /// Why.
        rejected: ChatRejected,
    },
    /// A copy of a line not sent to `to`: its inflow bound
    /// ([`ChatConfig::recipient_burst_bytes`]) was spent.
    Withheld {
        /// The recipient left out.
        to: u64,
    },
    /// Disconnect a member for repeated offences.
    Kick {
        /// The offender's account.
        account: u64,
    },
    /// Disconnect a kicked member again: it sent more before the first
    /// disconnect took effect, which may have been lost on the way. At most
    /// once a period per member, and not a new kick (neither counted nor
    /// logged: a flooder's sends after its kick must not each make one).
    KickAgain {
        /// The offender's account.
        account: u64,
    },
}

impl ChatOutput {
    /// The line this output delivers, and to whom.
    pub fn line(&self) -> Option<(u64, ChatLine)> {
        match self {
            Self::Line {
                to,
                seq,
                reply_to,
                line,
            } => Some((*to, line.line(*seq, *reply_to))),
            _ => None,
        }
    }
}

/// Where members are, for the nearby scope. Any `Fn(account) ->
/// Option<position>` is one (the room then checks every member's position
/// for each nearby message); a spatial index answers
/// [`within`](Self::within) directly.
pub trait Whereabouts {
    /// The member's position, if it has one.
    fn position(&self, account: u64) -> Option<Vec2>;

    /// Appends every member with a position within `radius` of `origin`
    /// to `out` and returns true; or returns false (the default) when this
    /// source cannot search by area.
    fn within(&self, origin: Vec2, radius: f32, out: &mut Vec<u64>) -> bool {
        let _ = (origin, radius, out);
        false
    }
}

impl<F: Fn(u64) -> Option<Vec2>> Whereabouts for F {
    fn position(&self, account: u64) -> Option<Vec2> {
        self(account)
    }
}

/// Strips what would let a line pass for something else or for nothing
/// (controls, format characters such as bidirectional overrides and
/// zero-width spaces, line and paragraph separators, blank fillers), cuts
/// stacks of combining marks to four and drops those with nothing
/// to stack on, trims, and checks emptiness and the length limit (in
/// characters, after cleaning).
///
/// # Errors
/// [`ChatRejectReason::Empty`] or [`ChatRejectReason::TooLong`].
pub fn clean_text(text: &str, max_chars: usize) -> Result<String, ChatRejectReason> {
    // The combining marks stacked on the last base character, `None`
    // without one: at the start, after white space (trimmed away, it
    // would leave them to stack on the name before the line). Joiners
    // are no base and start no new stack.
    let mut marks = None;
    let cleaned: String = text
        .chars()
        .filter(|&c| !is_stripped(c))
        .filter(|&c| {
            if is_joiner(c) {
                return true;
            }
            if is_combining_mark(c) {
                let Some(count) = marks.as_mut().filter(|count| **count < MAX_MARKS) else {
                    return false;
                };
                *count += 1;
            } else if c.is_whitespace() {
                marks = None;
            } else {
                marks = Some(0);
            }
            true
        })
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.chars().all(|c| c.is_whitespace() || is_joiner(c)) {
        return Err(ChatRejectReason::Empty);
    }
    if trimmed.chars().count() > max_chars {
        return Err(ChatRejectReason::TooLong);
    }
    Ok(trimmed.to_owned())
}

/// Characters chat drops: controls; format characters (bidirectional
/// overrides that reverse what follows, zero-width spaces, soft hyphens,
/// tags...), but the zero-width joiner that composes emoji; line and
/// paragraph separators, which a client may draw as a new line (a fake
/// "server:" line under the speaker's); the blank fillers that look like
/// nothing; and the code points Unicode reserves as default ignorable but
/// has not assigned yet, which renderers already draw as nothing.
fn is_stripped(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{AD}'
            | '\u{600}'..='\u{605}'
            | '\u{61C}'
            | '\u{6DD}'
            | '\u{70F}'
            | '\u{890}'..='\u{891}'
            | '\u{8E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200C}'
            | '\u{200E}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E00FF}'
            | '\u{E01F0}'..='\u{E0FFF}')
}

/// Combining marks a character keeps: enough for the stacked diacritics
/// of any language, too few for a "Zalgo" tower over the lines around.
const MAX_MARKS: u8 = 4;

/// A mark that stacks on the character before it: Unicode's general
/// category Mark, of every script (Thai tone marks and Hebrew points stack
/// as high as the Latin diacritics). The joiners and variation selectors
/// among them are [`is_joiner`]'s, which goes first.
fn is_combining_mark(c: char) -> bool {
    c.general_category_group() == GeneralCategoryGroup::Mark
}

/// Kept, but nothing to see on its own: the joiners (zero-width, and the
/// combining grapheme joiner) and the variation selectors (Mongolian
/// ones too).
fn is_joiner(c: char) -> bool {
    matches!(
        c,
        '\u{34F}'
            | '\u{180B}'..='\u{180D}'
            | '\u{180F}'
            | '\u{200D}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Millionths of a token: the bucket counts in integers so that refills
/// add up exactly (ten refills of 0.1 make one token).
const MICRO: u64 = 1_000_000;

/// A token bucket: `burst` tokens, refilled a fixed amount each period of
/// wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TokenBucket {
    micro_tokens: u64,
}

impl TokenBucket {
    fn full(burst: u32) -> Self {
        Self {
            micro_tokens: u64::from(burst) * MICRO,
        }
    }

    fn refill(&mut self, micro: u64, burst: u32) {
        self.micro_tokens = self
            .micro_tokens
            .saturating_add(micro)
            .min(u64::from(burst) * MICRO);
    }

    fn try_take(&mut self) -> bool {
        if self.micro_tokens >= MICRO {
            self.micro_tokens -= MICRO;
            true
        } else {
            false
        }
    }

    /// Returns a token taken for a send the server refused for reasons of
    /// its own.
    fn give_back(&mut self) {
        self.micro_tokens = self.micro_tokens.saturating_add(MICRO);
    }
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    bucket: TokenBucket,
    /// Offences since the last mute (or since joining), each within
    /// [`OFFENCE_MEMORY_SECS`] of the one before.
    offences: u32,
    /// When the last offence was, in periods (see [`ChatRoom::tick`]).
    last_offence: u64,
    /// Muted until this period (exclusive).
    muted_until: u64,
    /// Mutes so far, each ending within [`MUTE_MEMORY_SECS`] of the next
    /// (kept across a reconnect while they count, see [`Standing`]).
    mutes: u32,
    /// The last sequence number sent to this member.
    last_seq: u64,
    kicked: bool,
    /// When the disconnect of a kicked member was last asked for, in
    /// periods (see [`ChatOutput::KickAgain`]).
    kick_asked_at: u64,
    /// The tick in which a send refused for the fan-out bound last gave
    /// its token back (once a tick, see [`ChatRoom::say`]).
    refunded_in: Option<u64>,
    /// Bytes of other players' lines it may still be sent (see
    /// [`ChatConfig::recipient_burst_bytes`]).
    inbox: u64,
}

/// Offences further apart than this do not add up to a mute: a player who
/// sends one line too many now and then is refused each time, not muted
/// over a long session.
const OFFENCE_MEMORY_SECS: u64 = 60;

/// Mutes further apart than this (from the end of one to the next) do not
/// add up to a kick.
const MUTE_MEMORY_SECS: u64 = 600;

/// The first period in which mutes, the last of them ending at
/// `muted_until`, no longer count toward a kick.
fn mutes_forgotten_at(muted_until: u64, config: &ChatConfig) -> u64 {
    muted_until + MUTE_MEMORY_SECS * u64::from(config.tick_hz.max(1)) + 1
}

/// How long the room remembers a member who left with a mute, offences or
/// a spent bucket (or until the mute ends, or the bucket would be full
/// again, if later; and mutes for as long as they count toward a kick,
/// [`MUTE_MEMORY_SECS`] after the last one ends): reconnecting must not
/// wipe them.
const STANDING_SECS: u64 = 60;

/// A member's standing after it left, until [`Standing::until`]; times in
/// periods, as the member's.
#[derive(Debug, Clone)]
struct Standing {
    bucket: TokenBucket,
    offences: u32,
    last_offence: u64,
    muted_until: u64,
    mutes: u32,
    left_at: u64,
    /// Forgotten in this period.
    until: u64,
}

/// The standings of members who left: at most
/// [`ChatConfig::rejoin_memory_players`], each until its
/// [`Standing::until`].
#[derive(Debug, Clone, Default)]
struct Standings {
    by_account: HashMap<u64, Standing>,
    /// Every standing's `(until, account)`, the first to run out first.
    by_expiry: BTreeSet<(u64, u64)>,
}

impl Standings {
    /// Keeps `standing` for `account`; past `most` standings, forgets the
    /// ones that run out soonest (this one, if it does).
    fn keep(&mut self, account: u64, standing: Standing, most: usize) {
        self.take(account);
        self.by_expiry.insert((standing.until, account));
        self.by_account.insert(account, standing);
        while self.by_account.len() > most {
            self.forget_first();
        }
    }

    /// The standing of `account`, forgotten.
    fn take(&mut self, account: u64) -> Option<Standing> {
        let standing = self.by_account.remove(&account)?;
        self.by_expiry.remove(&(standing.until, account));
        Some(standing)
    }

    /// Forgets the standings run out by `now`.
    fn forget_expired(&mut self, now: u64) {
        while self
            .by_expiry
            .first()
            .is_some_and(|&(until, _)| until <= now)
        {
            self.forget_first();
        }
    }

    fn forget_first(&mut self) {
        if let Some((_, account)) = self.by_expiry.pop_first() {
            self.by_account.remove(&account);
        }
    }
}

/// The chat state of every member in session.
#[derive(Debug, Clone)]
pub struct ChatRoom {
    config: ChatConfig,
    /// Ticks run, for what is once a tick (the fan-out bound's refund).
    tick: u64,
    /// Periods of wall time passed, for everything counted in seconds
    /// (refills, mutes, the memories of offences, mutes and standings).
    now: u64,
    members: HashMap<u64, Member>,
    /// Accounts that left with something to answer for (see [`Standing`]).
    standing: Standings,
    /// Each member's account by display name, for whispers by name (a
    /// scan of the members per whisper would let each player's whispers
    /// cost the tick O(members)). Names are unique (the game derives them
    /// from the account); should two members share one, the later holds it.
    by_name: HashMap<String, u64>,
    /// What this tick's lines cost so far, in bytes (see
    /// [`ChatConfig::max_fanout_bytes_per_tick`]).
    fanout_bytes: usize,
}

/// Why a line refused for the tick's fan-out bound is refused.
const SPENT_TICK: &str = "the server has too much chat to send right now; try again in a moment";

/// What one delivered copy of a line costs besides its text and the
/// speaker's name: its message header and sequence number, the command
/// that carries it to `net-io` and the room's output.
pub const DELIVERY_OVERHEAD_BYTES: usize = 128;

impl ChatRoom {
    /// An empty room.
    pub fn new(config: ChatConfig) -> Self {
        Self {
            config,
            tick: 0,
            now: 0,
            members: HashMap::new(),
            standing: Standings::default(),
            by_name: HashMap::new(),
            fanout_bytes: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    /// Whether `account` is in session (joined and not left).
    pub fn is_member(&self, account: u64) -> bool {
        self.members.contains_key(&account)
    }

    /// Moves on to the next tick, which stands for `periods` periods of
    /// wall time ([`TickStats::periods_this_tick`]: 1 on schedule, 0 for a
    /// catch-up tick, more after a stall): refills every bucket for them
    /// and counts them toward mutes' ends and what the room remembers.
    /// Rates and durations are promised in seconds, and a server that
    /// falls behind its tick rate runs fewer ticks than periods: counted
    /// in ticks, its buckets would refill slower than `rate_per_sec` and
    /// honest players be refused, muted and kicked. However many periods a
    /// stall stands for, a bucket fills to `burst` at most.
    ///
    /// [`TickStats::periods_this_tick`]: crate::tick::TickStats::periods_this_tick
    pub fn tick(&mut self, periods: u32) {
        self.tick += 1;
        self.now = self.now.saturating_add(u64::from(periods));
        self.fanout_bytes = 0;
        let refill = self.refill_per_period().saturating_mul(u64::from(periods));
        let burst = self.config.burst;
        let inflow = self
            .inbox_refill_per_period()
            .saturating_mul(u64::from(periods));
        let inbox_burst = self.config.recipient_burst_bytes as u64;
        for member in self.members.values_mut() {
            member.bucket.refill(refill, burst);
            member.inbox = member.inbox.saturating_add(inflow).min(inbox_burst);
        }
        self.standing.forget_expired(self.now);
    }

    /// Rounded up: rounded to nearest, 1 msg/s at 30 Hz refilled 0.99999
    /// of a token a second, and a client sending at exactly the advertised
    /// rate was refused every other line.
    fn refill_per_period(&self) -> u64 {
        (self.config.rate_per_sec.max(0.0) * MICRO as f64 / f64::from(self.config.tick_hz.max(1)))
            .ceil() as u64
    }

    /// Bytes a member's inbox refills a period, rounded up.
    fn inbox_refill_per_period(&self) -> u64 {
        (self.config.recipient_bytes_per_sec as u64).div_ceil(u64::from(self.config.tick_hz.max(1)))
    }

    /// A member joins (its session is established); with
    /// [`ChatConfig::announce_sessions`], everyone, the newcomer included,
    /// gets a system line, for a token of the member's bucket (none left,
    /// or muted: no line; see [`ChatConfig::announce_sessions`]). Joining again while
    /// in session renames the member: its standing and its lines'
    /// numbering carry on.
    pub fn join(&mut self, account: u64, name: String, out: &mut Vec<ChatOutput>) {
        let text = format!("{name} joined");
        if let Some(member) = self.members.get_mut(&account) {
            // In session already: a rename. Its mute, offences, bucket and
            // numbering go on; only the name changes.
            let old = std::mem::replace(&mut member.name, name.clone());
            let announced = Self::announces(&self.config, self.now, member);
            self.forget_name(&old, account);
            self.by_name.insert(name, account);
            if announced && !self.system(&text, out) {
                self.give_back(account);
            }
            return;
        }
        self.by_name.insert(name.clone(), account);
        let mut member = Member {
            name,
            bucket: TokenBucket::full(self.config.burst),
            offences: 0,
            last_offence: 0,
            muted_until: 0,
            mutes: 0,
            last_seq: 0,
            kicked: false,
            kick_asked_at: 0,
            refunded_in: None,
            inbox: self.config.recipient_burst_bytes as u64,
        };
        // Back soon after leaving: the mute, the offences and the bucket
        // (refilled for the time away) carry on.
        if let Some(was) = self.standing.take(account) {
            let away = self.now.saturating_sub(was.left_at);
            member.bucket = was.bucket;
            member.bucket.refill(
                self.refill_per_period().saturating_mul(away),
                self.config.burst,
            );
            member.offences = was.offences;
            member.last_offence = was.last_offence;
            member.muted_until = was.muted_until;
            member.mutes = was.mutes;
        }
        let announced = Self::announces(&self.config, self.now, &mut member);
        self.members.insert(account, member);
        if announced && !self.system(&text, out) {
            self.give_back(account);
        }
    }

    /// Gives `account`'s token back for an announcement the tick's
    /// fan-out bound left out: the line cost nothing, as a player's line
    /// refused for it does not.
    fn give_back(&mut self, account: u64) {
        if let Some(member) = self.members.get_mut(&account) {
            member.bucket.give_back();
        }
    }

    /// Whether `member`'s join or leave is announced, taking the token it
    /// costs (given back if the line is left out): a muted member's is not
    /// (chatting, it would say nothing).
    fn announces(config: &ChatConfig, now: u64, member: &mut Member) -> bool {
        config.announce_sessions && now >= member.muted_until && member.bucket.try_take()
    }

    /// A member leaves; with [`ChatConfig::announce_sessions`], the others
    /// get a system line, for a token of its bucket (kept for its return;
    /// muted: no line).
    pub fn leave(&mut self, account: u64, out: &mut Vec<ChatOutput>) {
        let Some(mut member) = self.members.remove(&account) else {
            return;
        };
        if Self::announces(&self.config, self.now, &mut member)
            && !self.system(&format!("{} left", member.name), out)
        {
            member.bucket.give_back();
        }
        self.forget_name(&member.name, account);
        let clean = member.offences == 0
            && member.mutes == 0
            && member.muted_until <= self.now
            && member.bucket == TokenBucket::full(self.config.burst);
        if !clean {
            let memory = STANDING_SECS * u64::from(self.config.tick_hz.max(1));
            // Until its bucket would be full again had it stayed, too:
            // leaving must not refill it sooner.
            let missing = (u64::from(self.config.burst) * MICRO)
                .saturating_sub(member.bucket.micro_tokens)
                .div_ceil(self.refill_per_period().max(1));
            let mut until = member
                .muted_until
                .max(self.now + memory)
                .max(self.now + missing);
            if member.mutes > 0 {
                // Its mutes count toward a kick as long as if it had
                // stayed: leaving a minute must not start them again.
                until = until.max(mutes_forgotten_at(member.muted_until, &self.config));
            }
            self.standing.keep(
                account,
                Standing {
                    bucket: member.bucket,
                    offences: member.offences,
                    last_offence: member.last_offence,
                    muted_until: member.muted_until,
                    mutes: member.mutes,
                    left_at: self.now,
                    until,
                },
                self.config.rejoin_memory_players as usize,
            );
        }
    }

    fn forget_name(&mut self, name: &str, account: u64) {
        if self.by_name.get(name) == Some(&account) {
            self.by_name.remove(name);
        }
    }

    /// A system line to every member, within the tick's fan-out bound (see
    /// [`ChatConfig::max_fanout_bytes_per_tick`]): beyond it the line is
    /// left out (logged), as players' lines are refused, so that a tick in
    /// which thousands of players come or go does not send each of them
    /// to everyone. Returns whether it went out.
    pub fn system(&mut self, text: &str, out: &mut Vec<ChatOutput>) -> bool {
        let text = self.system_text(text);
        let cost = self.members.len() * (text.len() + SYSTEM_NAME.len() + DELIVERY_OVERHEAD_BYTES);
        if !self.spend_fanout(cost) {
            tracing::debug!(text, "chat fan-out bound reached; system line left out");
            return false;
        }
        self.system_to_all(text, out);
        true
    }

    /// An operator's line (the console's `say`) to every member, whatever
    /// the tick's fan-out bound: one a command, typed by a person, and a
    /// restart notice must not go missing in a busy tick. Its bytes count
    /// in the tick's fan-out, for the lines after it.
    pub fn announce(&mut self, text: &str, out: &mut Vec<ChatOutput>) {
        let text = self.system_text(text);
        self.fanout_bytes +=
            self.members.len() * (text.len() + SYSTEM_NAME.len() + DELIVERY_OVERHEAD_BYTES);
        self.system_to_all(text, out);
    }

    /// A system line of `text` (made by [`system_text`](Self::system_text))
    /// to every member.
    fn system_to_all(&mut self, text: String, out: &mut Vec<ChatOutput>) {
        let mut recipients: Vec<u64> = self.members.keys().copied().collect();
        recipients.sort_unstable();
        let line = Arc::new(ChatLineBody {
            from: None,
            from_name: SYSTEM_NAME.to_owned(),
            kind: ChatKind::System,
            text,
        });
        for to in recipients {
            self.deliver(to, None, &line, out);
        }
    }

    /// A system line's text as players' lines are sent: stripped of what
    /// chat strips, cut to [`ChatConfig::max_chars`] characters (a line
    /// past the transport's largest message would reach no one, its
    /// sequence number spent).
    fn system_text(&self, text: &str) -> String {
        text.chars()
            .filter(|&c| !is_stripped(c))
            .take(self.config.max_chars)
            .collect()
    }

    /// Whether this tick's fan-out bound has room for `cost` more bytes
    /// (the tick's first line always has).
    fn fanout_has_room(&self, cost: usize) -> bool {
        self.fanout_bytes == 0 || self.fanout_bytes + cost <= self.config.max_fanout_bytes_per_tick
    }

    /// [`fanout_has_room`](Self::fanout_has_room), counting `cost` if so.
    fn spend_fanout(&mut self, cost: usize) -> bool {
        if !self.fanout_has_room(cost) {
            return false;
        }
        self.fanout_bytes += cost;
        true
    }

    /// Refuses `from`'s line `client_ref` for the tick's fan-out bound or
    /// its recipient's inflow bound, saying `message`: the server's limit,
    /// not the sender's, so its token comes back and
    /// trying again next tick is no offence. Once a tick: sending again
    /// and again into a spent tick costs tokens like any send.
    fn refuse_for_fanout(
        &mut self,
        from: u64,
        client_ref: u32,
        tick: u64,
        message: String,
        out: &mut Vec<ChatOutput>,
    ) {
        if let Some(member) = self.members.get_mut(&from)
            && member.refunded_in != Some(tick)
        {
            member.refunded_in = Some(tick);
            member.bucket.give_back();
        }
        out.push(ChatOutput::Rejected {
            to: from,
            rejected: ChatRejected {
                client_ref,
                reason: ChatRejectReason::RateLimited,
                message,
            },
        });
    }

    /// A system line to one member (an admin kick's reason, before its
    /// disconnect); nothing when `to` is not a member.
    pub fn system_to(&mut self, to: u64, text: &str, out: &mut Vec<ChatOutput>) {
        if !self.members.contains_key(&to) {
            return;
        }
        let line = Arc::new(ChatLineBody {
            from: None,
            from_name: SYSTEM_NAME.to_owned(),
            kind: ChatKind::System,
            text: self.system_text(text),
        });
        self.deliver(to, None, &line, out);
    }

    /// A member says something. `client_ref` is the sender's
    /// [`ChatSend::client_ref`](shared::protocol::chat::ChatSend::client_ref):
    /// the answer echoes it, either the speaker's own copy (`reply_to`, in
    /// every scope) or the refusal. `whereabouts` gives members' positions
    /// for the nearby scope. A message from a non-member (no session yet,
    /// or already left) is ignored: returns false.
    pub fn say(
        &mut self,
        from: u64,
        client_ref: u32,
        scope: &ChatScope,
        text: &str,
        whereabouts: impl Whereabouts,
        out: &mut Vec<ChatOutput>,
    ) -> bool {
        let (tick, now) = (self.tick, self.now);
        let config = self.config.clone();
        let members = self.members.len();
        let Some(member) = self.members.get_mut(&from) else {
            return false;
        };
        if member.kicked {
            // Answered still, and the disconnect asked for again once a
            // period: if the first was lost, this one ends the member.
            out.push(reject(from, client_ref, ChatRejectReason::Kicked, &config));
            if member.kick_asked_at != now {
                member.kick_asked_at = now;
                out.push(ChatOutput::KickAgain { account: from });
            }
            return true;
        }
        if now < member.muted_until {
            Self::offence(
                member,
                from,
                client_ref,
                now,
                &config,
                ChatRejectReason::Muted,
                out,
            );
            return true;
        }
        // Every send costs a token, a refused one too: answering empty or
        // overlong lines must not be a way around the limit.
        if !member.bucket.try_take() {
            Self::offence(
                member,
                from,
                client_ref,
                now,
                &config,
                ChatRejectReason::RateLimited,
                out,
            );
            return true;
        }
        // The fewest copies the line can cost, each of one character: when
        // the tick's fan-out bound leaves no room even for that, it is
        // refused before its text is cleaned and its recipients listed.
        // That work grows with the text and the members, and the once-a-
        // tick refund would make such a send free of tokens. (An empty or
        // overlong line is then told to wait, like a valid one: which it
        // is, only cleaning tells.)
        let name_len = member.name.len();
        let whispered = match scope {
            ChatScope::WhisperId(to) => Some(self.members.contains_key(to).then_some(*to)),
            ChatScope::WhisperName(to) => Some(self.by_name.get(to).copied()),
            ChatScope::Global | ChatScope::Nearby => None,
        };
        let whisper_to = match whispered {
            Some(None) => {
                out.push(reject(
                    from,
                    client_ref,
                    ChatRejectReason::UnknownRecipient,
                    &config,
                ));
                return true;
            }
            Some(Some(to)) => Some(to),
            None => None,
        };
        let fewest_copies = match (scope, whisper_to) {
            (ChatScope::Global, _) => members,
            (_, Some(to)) if to != from => 2,
            _ => 1,
        };
        let least = fewest_copies * (1 + name_len + DELIVERY_OVERHEAD_BYTES);
        if !self.fanout_has_room(least) {
            self.refuse_for_fanout(from, client_ref, tick, SPENT_TICK.to_owned(), out);
            return true;
        }
        let Some(member) = self.members.get_mut(&from) else {
            return false;
        };
        let text = match clean_text(text, config.max_chars) {
            Ok(text) => text,
            Err(reason) => {
                out.push(reject(from, client_ref, reason, &config));
                return true;
            }
        };
        let name = member.name.clone();
        let (kind, mut recipients) = match (scope, whisper_to) {
            (_, Some(to)) => (ChatKind::Whisper, vec![from, to]),
            (ChatScope::Global, None) => (ChatKind::Global, self.members.keys().copied().collect()),
            // Nearby: a whisper has its recipient by now.
            (_, None) => {
                let radius = config.nearby_radius;
                let mut recipients = vec![from];
                if let Some(origin) = whereabouts.position(from)
                    && !whereabouts.within(origin, radius, &mut recipients)
                {
                    recipients.extend(self.members.keys().copied().filter(|&m| {
                        whereabouts
                            .position(m)
                            .is_some_and(|p| p.distance_squared(origin) <= radius * radius)
                    }));
                }
                (ChatKind::Nearby, recipients)
            }
        };
        recipients.sort_unstable();
        recipients.dedup();
        // Everyone in range gets a copy: many players saying long lines to
        // everyone at once would otherwise make one tick's output (and
        // memory) grow with players × lines × recipients. A tick's first
        // line always goes.
        let copy = text.len() + name.len() + DELIVERY_OVERHEAD_BYTES;
        // A whisper its recipient cannot be sent is refused whole: its
        // sender can try again, where a nearby or global line goes on to
        // the others.
        if let Some(to) = whisper_to
            && to != from
            && self.members.get(&to).is_some_and(|m| m.inbox < copy as u64)
        {
            let message = format!(
                "{} is being sent more chat than they can take right now; try again in a moment",
                self.members[&to].name
            );
            self.refuse_for_fanout(from, client_ref, tick, message, out);
            return true;
        }
        if !self.spend_fanout(recipients.len() * copy) {
            self.refuse_for_fanout(from, client_ref, tick, SPENT_TICK.to_owned(), out);
            return true;
        }
        let line = Arc::new(ChatLineBody {
            from: Some(from),
            from_name: name,
            kind,
            text,
        });
        for to in recipients {
            let Some(member) = self.members.get_mut(&to) else {
                continue;
            };
            // The speaker's own copy always goes (it answers the send),
            // and is not charged: its own rate limit bounds it.
            if to != from {
                if member.inbox < copy as u64 {
                    self.fanout_bytes -= copy;
                    out.push(ChatOutput::Withheld { to });
                    continue;
                }
                member.inbox -= copy as u64;
            }
            let reply_to = (to == from).then_some(client_ref);
            out.push(member.next_line(to, reply_to, &line));
        }
        true
    }

    /// An offence at `now` (in periods).
    fn offence(
        member: &mut Member,
        account: u64,
        client_ref: u32,
        now: u64,
        config: &ChatConfig,
        reason: ChatRejectReason,
        out: &mut Vec<ChatOutput>,
    ) {
        let memory = OFFENCE_MEMORY_SECS * u64::from(config.tick_hz.max(1));
        if now.saturating_sub(member.last_offence) > memory {
            member.offences = 0;
        }
        member.offences += 1;
        member.last_offence = now;
        if member.offences < config.mute_after_offences {
            out.push(if reason == ChatRejectReason::Muted {
                let left = member
                    .muted_until
                    .saturating_sub(now)
                    .div_ceil(u64::from(config.tick_hz.max(1)));
                ChatOutput::Rejected {
                    to: account,
                    rejected: ChatRejected {
                        client_ref,
                        reason,
                        message: format!(
                            "you are muted for {left} more s; keep sending and you will be \
                             muted again or kicked"
                        ),
                    },
                }
            } else {
                reject(account, client_ref, reason, config)
            });
            return;
        }
        member.offences = 0;
        if now >= mutes_forgotten_at(member.muted_until, config) {
            member.mutes = 0;
        }
        if member.mutes >= config.kick_after_mutes {
            member.kicked = true;
            member.kick_asked_at = now;
            out.push(reject(
                account,
                client_ref,
                ChatRejectReason::Kicked,
                config,
            ));
            out.push(ChatOutput::Kick { account });
            return;
        }
        member.mutes += 1;
        member.muted_until = now + u64::from(config.mute_secs) * u64::from(config.tick_hz);
        let next = match config.kick_after_mutes - member.mutes {
            0 => "flood it again and you will be disconnected".to_owned(),
            1 => "one more mute, and the flood after it disconnects you".to_owned(),
            more => format!("{more} more mutes, and the flood after them disconnects you"),
        };
        out.push(ChatOutput::Rejected {
            to: account,
            rejected: ChatRejected {
                client_ref,
                reason: ChatRejectReason::Muted,
                message: format!(
                    "you are muted for {} s for flooding the chat; {next}",
                    config.mute_secs
                ),
            },
        });
    }

    fn deliver(
        &mut self,
        to: u64,
        reply_to: Option<u32>,
        line: &Arc<ChatLineBody>,
        out: &mut Vec<ChatOutput>,
    ) {
        if let Some(member) = self.members.get_mut(&to) {
            out.push(member.next_line(to, reply_to, line));
        }
    }
}

impl Member {
    /// `line` numbered for this member, `to`.
    fn next_line(
        &mut self,
        to: u64,
        reply_to: Option<u32>,
        line: &Arc<ChatLineBody>,
    ) -> ChatOutput {
        self.last_seq += 1;
        ChatOutput::Line {
            to,
            seq: self.last_seq,
            reply_to,
            line: Arc::clone(line),
        }
    }
}

fn reject(to: u64, client_ref: u32, reason: ChatRejectReason, config: &ChatConfig) -> ChatOutput {
    let message = match reason {
        ChatRejectReason::RateLimited => format!(
            "slow down: at most {} messages in a burst, then {} per second",
            config.burst, config.rate_per_sec
        ),
        ChatRejectReason::TooLong => {
            format!("message too long: at most {} characters", config.max_chars)
        }
        ChatRejectReason::Empty => "message is empty".to_owned(),
        ChatRejectReason::Muted => "you are muted".to_owned(),
        ChatRejectReason::UnknownRecipient => "no such player is online".to_owned(),
        ChatRejectReason::Kicked if config.kick_after_mutes == 0 => {
            "you are disconnected for flooding the chat".to_owned()
        }
        ChatRejectReason::Kicked => {
            "you are disconnected for flooding the chat after being muted".to_owned()
        }
    };
    ChatOutput::Rejected {
        to,
        rejected: ChatRejected {
            client_ref,
            reason,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nowhere(_: u64) -> Option<Vec2> {
        None
    }

    /// A muted leaver's standing is kept while its mutes count toward a
    /// kick and forgotten in the first period they no longer do: the room
    /// remembers only what still counts.
    #[test]
    fn a_muted_leavers_standing_is_forgotten_when_its_mutes_stop_counting() {
        let config = ChatConfig {
            burst: 1,
            mute_after_offences: 1,
            mute_secs: 5,
            tick_hz: 10,
            ..ChatConfig::default()
        };
        let mut room = ChatRoom::new(config.clone());
        let mut out = Vec::new();
        room.join(1, "player-1".into(), &mut out);
        for client_ref in 0..2 {
            room.say(1, client_ref, &ChatScope::Global, "spam", nowhere, &mut out);
        }
        assert_eq!(room.members[&1].muted_until, 50);
        room.leave(1, &mut out);
        let forgotten_at = mutes_forgotten_at(50, &config);
        while room.now + 1 < forgotten_at {
            room.tick(1);
        }
        assert!(room.standing.by_account.contains_key(&1));
        room.tick(1);
        assert!(room.standing.by_account.is_empty());
        assert!(room.standing.by_expiry.is_empty());
    }
}
