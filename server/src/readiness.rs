//! Finding a server you started: the addresses it announces in its log.
//!
//! A supervisor (a test, a fleet agent) that starts the binary with port 0
//! (`--bind 127.0.0.1:0 --metrics-bind 127.0.0.1:0`) lets the OS pick free
//! ports, so two servers never race for one, and learns them from two
//! `info` lines of the `server` target, in either log format (JSON is the
//! one to parse in production):
//! `serving /metrics and /healthz` (field `addr`) and `serving game traffic`
//! (fields `bind` and `public`). The game line comes last, once the socket is
//! bound and the `net-io` thread runs: clients may connect from then on.
//! Keep `server=info` in the log filter (e.g. `warn,server=info`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ExitStatus};
use std::time::Duration;

/// The message of the log line that announces the game socket.
pub const GAME_ANNOUNCEMENT: &str = "serving game traffic";
/// The message of the log line that announces the metrics endpoint.
pub const METRICS_ANNOUNCEMENT: &str = "serving /metrics and /healthz";

/// How many of the last log lines a [`NotListening`] error keeps.
const LOG_TAIL: usize = 20;

/// Where a started server listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening {
    /// The game socket's local address.
    pub game: SocketAddr,
    /// The address connect tokens must name.
    pub public: SocketAddr,
    /// The `/metrics` and `/healthz` endpoint.
    pub metrics: SocketAddr,
}

/// Collects the announcements from log lines, one line at a time.
#[derive(Debug, Default)]
pub struct Announcements {
    game: Option<(SocketAddr, SocketAddr)>,
    metrics: Option<SocketAddr>,
}

impl Announcements {
    /// Reads one log line, JSON or text; returns the addresses once both
    /// were announced. Other lines are skipped.
    pub fn read_line(&mut self, line: &str) -> Option<Listening> {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(entry) => {
                let fields = &entry["fields"];
                self.note(fields["message"].as_str(), |name| {
                    fields[name].as_str()?.parse().ok()
                });
            }
            // Text: `... server: MESSAGE key=value key=value`.
            Err(_) => {
                for message in [GAME_ANNOUNCEMENT, METRICS_ANNOUNCEMENT] {
                    if let Some((_, fields)) = line.split_once(message) {
                        self.note(Some(message), |name| {
                            fields
                                .split_whitespace()
                                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))?
                                .parse()
                                .ok()
                        });
                    }
                }
            }
        }
        let (game, public) = self.game?;
        Some(Listening {
            game,
            public,
            metrics: self.metrics?,
        })
    }

    /// Records an announcement: `message`, and its fields by name.
    fn note(&mut self, message: Option<&str>, address: impl Fn(&str) -> Option<SocketAddr>) {
        match message {
            Some(GAME_ANNOUNCEMENT) => {
                if let (Some(bind), Some(public)) = (address("bind"), address("public")) {
                    self.game = Some((bind, public));
                }
            }
            Some(METRICS_ANNOUNCEMENT) => self.metrics = address("addr").or(self.metrics),
            _ => {}
        }
    }
}

/// Why [`wait_until_listening`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum NotListening {
    /// The child was not started with `stderr(Stdio::piped())`, or its
    /// stderr was taken already.
    #[error("the server's stderr is not piped to this process")]
    NotPiped,
    /// The server closed its stderr (it exited) before announcing both.
    #[error("the server exited ({status:?}) before it was listening; its last log lines:\n{log}")]
    Exited {
        /// The exit status, if the process had been reaped by then.
        status: Option<ExitStatus>,
        /// The last log lines it wrote.
        log: String,
    },
    /// The thread that reads the log could not start.
    #[error("cannot start the thread that reads the server's log: {0}")]
    Thread(std::io::Error),
    /// Neither announcement came in time.
    #[error("the server did not announce its addresses within {0:?}")]
    Timeout(Duration),
}

/// Reads `child`'s log from its piped stderr until the server announced
/// where it listens, or `limit` passed. A thread named `server-log` passes
/// every line on to this process's stderr, before the announcement and
/// after, so the pipe never fills and the log stays readable (test
/// harnesses capture it).
///
/// # Errors
/// See [`NotListening`].
pub fn wait_until_listening(child: &mut Child, limit: Duration) -> Result<Listening, NotListening> {
    let stderr = child.stderr.take().ok_or(NotListening::NotPiped)?;
    let (ready, announced) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("server-log".to_owned())
        .spawn(move || {
            let mut announcements = Announcements::default();
            let mut tail = std::collections::VecDeque::with_capacity(LOG_TAIL);
            let mut announced = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if announced {
                    continue;
                }
                if let Some(listening) = announcements.read_line(&line) {
                    announced = true;
                    let _ = ready.send(Ok(listening));
                    continue;
                }
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            if !announced {
                let _ = ready.send(Err(Vec::from(tail).join("\n")));
            }
        })
        .map_err(NotListening::Thread)?;
    match announced.recv_timeout(limit) {
        Ok(Ok(listening)) => Ok(listening),
        Ok(Err(log)) => Err(NotListening::Exited {
            status: child.try_wait().ok().flatten(),
            log,
        }),
        Err(_) => Err(NotListening::Timeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: &str, fields: &str) -> String {
        format!(
            r#"{{"timestamp":"2026-12-03T14:00:00Z","level":"INFO","fields":{{"message":"{message}"{fields}}},"target":"server"}}"#
        )
    }

    #[test]
    fn both_announcements_in_either_order_give_the_addresses() {
        let game = line(
            GAME_ANNOUNCEMENT,
            r#","bind":"127.0.0.1:40001","public":"127.0.0.1:40001""#,
        );
        let metrics = line(METRICS_ANNOUNCEMENT, r#","addr":"127.0.0.1:40002""#);
        let expected = Listening {
            game: "127.0.0.1:40001".parse().unwrap(),
            public: "127.0.0.1:40001".parse().unwrap(),
            metrics: "127.0.0.1:40002".parse().unwrap(),
        };
        for order in [[&game, &metrics], [&metrics, &game]] {
            let mut announcements = Announcements::default();
            assert_eq!(announcements.read_line(order[0]), None);
            assert_eq!(announcements.read_line("not json at all"), None);
            assert_eq!(
                announcements.read_line(&line("client connected", r#","account":7"#)),
                None
            );
            assert_eq!(announcements.read_line(order[1]), Some(expected));
        }
    }

    #[test]
    fn text_lines_announce_the_same_addresses() {
        let mut announcements = Announcements::default();
        let metrics = "2026-12-03T14:00:00.000001Z  INFO main server: \
            serving /metrics and /healthz addr=127.0.0.1:40002";
        let game = "2026-12-03T14:00:00.000002Z  INFO main server: \
            serving game traffic bind=0.0.0.0:40001 public=127.0.0.1:40001";
        assert_eq!(announcements.read_line(metrics), None);
        assert_eq!(
            announcements.read_line(game),
            Some(Listening {
                game: "0.0.0.0:40001".parse().unwrap(),
                public: "127.0.0.1:40001".parse().unwrap(),
                metrics: "127.0.0.1:40002".parse().unwrap(),
            })
        );
    }

    #[test]
    fn an_announcement_without_a_parsable_address_does_not_count() {
        let mut announcements = Announcements::default();
        announcements.read_line(&line(METRICS_ANNOUNCEMENT, r#","addr":"127.0.0.1:40002""#));
        let broken = line(
            GAME_ANNOUNCEMENT,
            r#","bind":"nowhere","public":"127.0.0.1:1""#,
        );
        assert_eq!(announcements.read_line(&broken), None);
    }
}
