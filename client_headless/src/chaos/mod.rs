//! `chaos`: adversarial traffic against a server you own, the same kinds
//! the adversarial end-to-end tests (`tests/`) send: garbage datagrams, a
//! spoofed connection-request flood, slot holding, fragment bombs and a
//! reader that never acknowledges.
//!
//! Every attack is bounded twice: it sends at most `rate` datagrams (or
//! connections, for `slot-hold`) per second, paced against the start time
//! so the schedule does not drift, and it stops after `duration` (plus at
//! most `CATCH_UP` for a sender kept behind, what it could not send then
//! counted as `unsent`, what the kernel refused to send as
//! `send_refused`, and `GRACE` to collect the answers, or up to 5 s for
//! the fragment bomb's over-claim; an attack's own
//! sessions connect first, up to 5 s, and spoof-connect's probe may wait up
//! to 5 s more).
//! It refuses a non-loopback target unless the operator states that they
//! own it.
//!
//! The traffic itself comes from [`generators`], which the adversarial
//! end-to-end tests (`tests/`, crate `e2e`) use as well: one implementation
//! of garbage datagrams, spoofed requests and fragment bombs. See the
//! README's "Chaos" section.

mod fragment_bomb;
mod garbage;
pub mod generators;
mod session;
mod slot_hold;
mod slow_reader;
mod spoof_connect;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use generators::Rng;

/// Most account ids one attack uses, from its first (slot-hold's 4,096
/// sessions; spoof-connect's probe at first + 100).
pub const MAX_ACCOUNTS: u64 = 4_096;

/// How long an attack keeps reading after its sending window, for answers
/// still in flight (a disconnect, a denial).
pub(crate) const GRACE: Duration = Duration::from_millis(1_500);

/// How long after its window a sender kept behind (a stall, a rate faster
/// than it can send) may still catch up; the sends left then are given up.
pub(crate) const CATCH_UP: Duration = Duration::from_millis(500);

/// The attacks, named as on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// Random datagrams, edge sizes and bit-flipped valid packets.
    Garbage,
    /// Replayed, forged and corrupted connection requests from many source
    /// addresses, while a legitimate probe client connects.
    SpoofConnect,
    /// Connect and go silent, holding server slots until the timeouts.
    SlotHold,
    /// Fragments of messages that never complete, then an over-claim.
    FragmentBomb,
    /// Read everything, acknowledge nothing, keep the session alive.
    SlowReader,
}

/// One chaos run.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// The server's UDP address.
    pub server: SocketAddr,
    /// What to send.
    pub attack: Attack,
    /// Datagrams (slot-hold: connections) per second.
    pub rate: u32,
    /// How long to send.
    pub duration: Duration,
    /// Seed of the random choices.
    pub seed: u64,
    /// First account id the attack's tokens use.
    pub first_account: u64,
}

/// Why a target of `what` (a chaos attack, a load test) is refused: one
/// that is no single host's address, whatever the flag; one off this host
/// (not loopback, IPv4-mapped loopback included) without
/// `--i-own-this-server`.
pub fn check_target(server: SocketAddr, i_own_this_server: bool, what: &str) -> Result<(), String> {
    let ip = server.ip().to_canonical();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_multicast() || ip.is_unspecified() || broadcast || server.port() == 0 {
        return Err(format!(
            "refusing to {what} {server}: it is not the address of one server"
        ));
    }
    if ip.is_loopback() || i_own_this_server {
        Ok(())
    } else {
        Err(format!(
            "refusing to {what} {server}: it is not a loopback address. \
             This traffic is for servers you own; pass --i-own-this-server if you do"
        ))
    }
}

/// What an attack sent and received, printed as `key: value` lines.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub(crate) sent_datagrams: u64,
    pub(crate) sent_bytes: u64,
    pub(crate) received_datagrams: u64,
    pub(crate) received_bytes: u64,
    /// Datagrams the kernel refused to send (a full socket buffer, no
    /// buffer space: a rate faster than this host sends), in neither
    /// `sent_datagrams` nor `unsent`.
    pub(crate) send_refused: u64,
    /// Attack-specific results, in order.
    pub(crate) extra: Vec<(&'static str, String)>,
}

impl Summary {
    pub(crate) fn sent(&mut self, bytes: usize) {
        self.sent_datagrams += 1;
        self.sent_bytes += bytes as u64;
    }

    pub(crate) fn received(&mut self, bytes: usize) {
        self.received_datagrams += 1;
        self.received_bytes += bytes as u64;
    }

    pub(crate) fn add(&mut self, key: &'static str, value: impl ToString) {
        self.extra.push((key, value.to_string()));
    }

    fn render(&self, plan: &ChaosPlan, elapsed: Duration) -> String {
        let mut out = String::new();
        let attack = match plan.attack {
            Attack::Garbage => "garbage",
            Attack::SpoofConnect => "spoof-connect",
            Attack::SlotHold => "slot-hold",
            Attack::FragmentBomb => "fragment-bomb",
            Attack::SlowReader => "slow-reader",
        };
        let _ = writeln!(out, "attack: {attack}");
        let _ = writeln!(out, "target: {}", plan.server);
        let _ = writeln!(out, "rate: {}", plan.rate);
        let _ = writeln!(out, "seed: {}", plan.seed);
        let _ = writeln!(out, "elapsed_s: {:.2}", elapsed.as_secs_f64());
        let _ = writeln!(out, "sent_datagrams: {}", self.sent_datagrams);
        let _ = writeln!(out, "sent_bytes: {}", self.sent_bytes);
        let _ = writeln!(out, "received_datagrams: {}", self.received_datagrams);
        let _ = writeln!(out, "received_bytes: {}", self.received_bytes);
        let _ = writeln!(out, "send_refused: {}", self.send_refused);
        for (key, value) in &self.extra {
            let _ = writeln!(out, "{key}: {value}");
        }
        out
    }
}

/// Runs the attack and prints its summary to stdout.
pub fn run(plan: &ChaosPlan) -> Result<i32, String> {
    let started = Instant::now();
    let summary = match plan.attack {
        Attack::Garbage => garbage::run(plan)?,
        Attack::SpoofConnect => spoof_connect::run(plan)?,
        Attack::SlotHold => slot_hold::run(plan)?,
        Attack::FragmentBomb => fragment_bomb::run(plan)?,
        Attack::SlowReader => slow_reader::run(plan)?,
    };
    print!("{}", summary.render(plan, started.elapsed()));
    Ok(0)
}

/// Paces sends at `rate` per second from a fixed start, so a slow batch is
/// made up later instead of drifting; `due` never exceeds the total the
/// duration allows.
pub(crate) struct Pacer {
    start: Instant,
    rate: u32,
    duration: Duration,
    done: u64,
}

impl Pacer {
    pub(crate) fn new(rate: u32, duration: Duration) -> Self {
        Self {
            start: Instant::now(),
            rate,
            duration,
            done: 0,
        }
    }

    /// Whether the sending window is over and every send it allowed was
    /// made (a sender a stall kept behind sends the rest first), or
    /// [`CATCH_UP`] more has passed (the rest is [`unsent`](Self::unsent)).
    pub(crate) fn finished(&self) -> bool {
        let elapsed = self.start.elapsed();
        elapsed >= self.duration
            && (self.done >= self.total() || elapsed >= self.duration + CATCH_UP)
    }

    /// The sends the window allowed and the sender did not make.
    pub(crate) fn unsent(&self) -> u64 {
        self.total().saturating_sub(self.done)
    }

    /// The sends the whole window allows: rate × duration.
    fn total(&self) -> u64 {
        (self.duration.as_secs_f64() * f64::from(self.rate)) as u64
    }

    /// How many sends are due now (at most 1,000 per call); counts them as done.
    pub(crate) fn due(&mut self) -> u64 {
        let elapsed = self.start.elapsed().min(self.duration);
        let allowed = (elapsed.as_secs_f64() * f64::from(self.rate)) as u64;
        let n = allowed.saturating_sub(self.done).min(1_000);
        self.done += n;
        n
    }

    /// Sleeps a little between batches.
    pub(crate) fn pause(&self) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Makes the sends `pacer` has due now: `send` sends one datagram and
/// returns its length, or `None` when the kernel refused it (counted in
/// `send_refused`: the pacer counts it done, so it is not `unsent`).
pub(crate) fn send_due(
    pacer: &mut Pacer,
    summary: &mut Summary,
    mut send: impl FnMut() -> Option<usize>,
) {
    for _ in 0..pacer.due() {
        match send() {
            Some(bytes) => summary.sent(bytes),
            None => summary.send_refused += 1,
        }
    }
}

/// Source sockets: `count` distinct 127.0.<a>.x addresses for a loopback
/// IPv4 server (so per-address limits see many sources), else one socket on
/// the unspecified address.
pub(crate) fn source_sockets(
    server: SocketAddr,
    a: u8,
    count: u8,
) -> Result<Vec<UdpSocket>, String> {
    let loopback_v4 = matches!(server.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let addrs: Vec<SocketAddr> = if loopback_v4 {
        (1..=count.max(1))
            .map(|b| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, a, b), 0)))
            .collect()
    } else if server.is_ipv4() {
        vec![SocketAddr::from(([0, 0, 0, 0], 0))]
    } else {
        vec!["[::]:0".parse().map_err(|e| format!("{e}"))?]
    };
    addrs
        .into_iter()
        .map(|addr| {
            let socket = UdpSocket::bind(addr).map_err(|e| format!("cannot bind {addr}: {e}"))?;
            socket
                .set_nonblocking(true)
                .map_err(|e| format!("cannot make {addr} non-blocking: {e}"))?;
            Ok(socket)
        })
        .collect()
}

/// Reads everything waiting on a non-blocking socket into the summary.
pub(crate) fn drain(socket: &UdpSocket, summary: &mut Summary) {
    let mut buf = [0u8; 2_048];
    for _ in 0..10_000 {
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => summary.received(len),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_targets_need_the_ownership_flag() {
        for remote in [
            "192.0.2.1:7777",
            "[2001:db8::1]:7777",
            "[::ffff:192.0.2.1]:7777",
        ] {
            let remote: SocketAddr = remote.parse().unwrap();
            let err = check_target(remote, false, "attack").unwrap_err();
            assert!(err.contains("--i-own-this-server"), "{err}");
            assert!(check_target(remote, true, "attack").is_ok());
        }
        for local in [
            "127.0.0.1:7777",
            "127.3.2.1:7777",
            "[::1]:7777",
            "[::ffff:127.0.0.1]:7777",
        ] {
            assert!(
                check_target(local.parse().unwrap(), false, "attack").is_ok(),
                "{local}"
            );
        }
    }

    #[test]
    fn no_flag_makes_a_group_or_wildcard_address_a_target() {
        for target in [
            "239.255.255.250:1900",
            "255.255.255.255:7777",
            "0.0.0.0:7777",
            "[::]:7777",
            "[ff02::1]:7777",
            "127.0.0.1:0",
        ] {
            let err = check_target(target.parse().unwrap(), true, "load-test").unwrap_err();
            assert!(
                err.contains("not the address of one server"),
                "{target}: {err}"
            );
        }
    }

    #[test]
    fn the_pacer_allows_exactly_rate_times_duration() {
        let mut pacer = Pacer::new(1_000_000, Duration::from_millis(20));
        let mut total = 0;
        while !pacer.finished() {
            total += pacer.due();
        }
        assert_eq!(total, 20_000);
        assert_eq!(pacer.due(), 0);
    }

    /// A rate the sender cannot keep up with ends with the window and the
    /// catch-up, not once every send is made (which could be hours late).
    #[test]
    fn a_sender_that_cannot_keep_up_stops_after_the_catch_up() {
        let window = Duration::from_millis(200);
        let mut pacer = Pacer::new(1_000_000, window);
        let started = Instant::now();
        while !pacer.finished() {
            pacer.due();
            // 1,000 sends per 10 ms at most: a fifth of the rate.
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = started.elapsed();
        assert!(took >= window + CATCH_UP, "{took:?}");
        assert!(took < 2 * (window + CATCH_UP), "{took:?}");
        assert!(pacer.unsent() > 100_000, "{}", pacer.unsent());
    }

    /// A socket that refuses every send (its buffer full): every send
    /// the pacer allowed is in `send_refused` or `unsent`, and with one
    /// that refuses every other, in those or `sent_datagrams`.
    #[test]
    fn sends_the_kernel_refuses_are_counted() {
        let mut pacer = Pacer::new(100_000, Duration::from_millis(20));
        let mut summary = Summary::default();
        while !pacer.finished() {
            send_due(&mut pacer, &mut summary, || None);
        }
        assert_eq!(summary.sent_datagrams, 0);
        assert_eq!(summary.send_refused + pacer.unsent(), 2_000, "{summary:?}");

        let mut pacer = Pacer::new(100_000, Duration::from_millis(20));
        let mut summary = Summary::default();
        let mut refuse = false;
        while !pacer.finished() {
            send_due(&mut pacer, &mut summary, || {
                refuse = !refuse;
                (!refuse).then_some(100)
            });
        }
        assert!(summary.send_refused > 0, "{summary:?}");
        assert_eq!(
            summary.sent_datagrams + summary.send_refused + pacer.unsent(),
            2_000,
            "{summary:?}"
        );
        assert!(
            summary
                .render(&plan(), Duration::ZERO)
                .contains(&format!("\nsend_refused: {}\n", summary.send_refused))
        );
    }

    fn plan() -> ChaosPlan {
        ChaosPlan {
            server: "127.0.0.1:7777".parse().unwrap(),
            attack: Attack::Garbage,
            rate: 100_000,
            duration: Duration::from_millis(20),
            seed: 1,
            first_account: 1,
        }
    }

    #[test]
    fn a_sender_a_stall_kept_behind_sends_the_rest_before_it_finishes() {
        let mut pacer = Pacer::new(100_000, Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!pacer.finished(), "nothing was sent yet");
        let mut total = 0;
        while !pacer.finished() {
            total += pacer.due();
        }
        assert_eq!(total, 2_000);
    }
}
