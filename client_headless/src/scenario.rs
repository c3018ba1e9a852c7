//! Load-test scenarios: which behaviours every bot runs, and how often.
//!
//! A scenario is a TOML file (see `assets/scenarios/`): a `name`, then
//! sections, each optional; a missing section turns the behaviour off.
//! Within a section its rates are required, its weights default to 0.
//! Unknown keys are an error, so a typo never silently changes a test.
//!
//! ```toml
//! name = "default"
//! [wander]            # MoveInput at `hz` (at most the server's tick rate),
//!                     # a new random heading every `turn_every_s`
//! hz = 30.0
//! speed = 3.0         # m/s, at most the server's max_speed (from its welcome)
//! turn_every_s = 2.0
//! [chat]              # one line every `every_s`, scope drawn from the weights
//! every_s = 5.0
//! global = 0
//! nearby = 8
//! whisper = 2
//! [inventory]         # one operation every `every_s`, kind drawn from the weights
//! every_s = 1.0
//! pick = 1            # walk to a world item seen in `ListWorld`, pick it up
//! drop = 1
//! move = 1            # move or split a stack to an empty slot
//! use = 1             # use an item (bots learn which items are not usable)
//! give = 1            # give one item to another bot
//! trade = 2           # offer one item to another bot; it counter-offers and both accept
//! seek_speed = 6.0    # m/s while walking to an item, above 0 (default 6; idem)
//! [churn]             # leave after `session_s`, come back after `pause_s`
//! session_s = 30.0
//! pause_s = 2.0
//! ```

use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

/// A parsed, validated scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Scenario {
    /// Shown in the report.
    pub(crate) name: String,
    /// Free text for people.
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// Movement input.
    pub(crate) wander: Option<Wander>,
    /// Chat lines.
    pub(crate) chat: Option<Chat>,
    /// Inventory operations.
    pub(crate) inventory: Option<Inventory>,
    /// Connect/disconnect churn.
    pub(crate) churn: Option<Churn>,
}

/// Sends `MoveInput` at `hz` with a random heading.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Wander {
    /// Inputs per second, at most the server's tick rate (from its
    /// welcome): each input moves a player for one tick.
    pub(crate) hz: f64,
    /// Speed asked for, metres per second. 0 is allowed: the bots stand
    /// still and still send input, so snapshots keep coming (walking to an
    /// item uses [`Inventory::seek_speed`], which must be above 0).
    pub(crate) speed: f32,
    /// Seconds between heading changes.
    pub(crate) turn_every_s: f64,
}

/// Says a verified chat line every `every_s` seconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Chat {
    /// Seconds between lines (each bot starts at a random phase).
    pub(crate) every_s: f64,
    /// Weight of global lines (every player receives them: N² traffic).
    #[serde(default)]
    pub(crate) global: u32,
    /// Weight of nearby lines.
    #[serde(default)]
    pub(crate) nearby: u32,
    /// Weight of whispers to another bot of the swarm.
    #[serde(default)]
    pub(crate) whisper: u32,
}

/// Inventory operations, each an `InventoryRequest` with its own request
/// id (see `crate::inventory`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Inventory {
    /// Seconds between operations.
    pub(crate) every_s: f64,
    /// Weight of picking an item up.
    #[serde(default)]
    pub(crate) pick: u32,
    /// Weight of dropping an item.
    #[serde(default)]
    pub(crate) drop: u32,
    /// Weight of moving (or splitting) a stack to an empty slot.
    #[serde(default, rename = "move")]
    pub(crate) move_stack: u32,
    /// Weight of using an item.
    #[serde(default, rename = "use")]
    pub(crate) use_item: u32,
    /// Weight of giving an item to another bot.
    #[serde(default)]
    pub(crate) give: u32,
    /// Weight of a trade with another bot.
    #[serde(default)]
    pub(crate) trade: u32,
    /// Speed while walking to a world item to pick it up, m/s, above 0 (a
    /// bot at 0 would never reach its target); needs a `[wander]` section
    /// to move at all.
    #[serde(default = "default_seek_speed")]
    pub(crate) seek_speed: f32,
}

fn default_seek_speed() -> f32 {
    6.0
}

/// Bots leave after `session_s` (± 50 %, so they do not leave together)
/// and come back after `pause_s`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Churn {
    /// Mean seconds connected per session.
    pub(crate) session_s: f64,
    /// Seconds away between sessions.
    pub(crate) pause_s: f64,
}

/// What a chat line is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChatScopeKind {
    /// Everyone.
    Global,
    /// Players nearby.
    Nearby,
    /// Another bot.
    Whisper,
}

/// An inventory operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InventoryOp {
    /// Pick an item up.
    Pick,
    /// Drop one.
    Drop,
    /// Move or split a stack.
    Move,
    /// Use an item.
    Use,
    /// Give an item to another bot.
    Give,
    /// Trade with another bot.
    Trade,
}

/// Why a scenario could not be loaded.
#[derive(Debug, Error)]
pub(crate) enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML for a scenario.
    #[error("invalid scenario {origin}: {message}")]
    Parse {
        /// The file.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// Parsed, but a value is out of range.
    #[error("invalid scenario {origin}: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// The scenario used when `--scenario` is not given (the same as
/// `assets/scenarios/default.toml`).
pub(crate) const DEFAULT_TOML: &str = include_str!("../../assets/scenarios/default.toml");

impl Scenario {
    /// Reads and validates a scenario file.
    pub(crate) fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates scenario text; `origin` names it in errors.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let scenario: Self = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim().to_owned(),
        })?;
        scenario
            .validate()
            .map_err(|message| ScenarioError::Invalid {
                origin: origin.to_owned(),
                message,
            })?;
        Ok(scenario)
    }

    fn validate(&self) -> Result<(), String> {
        let period = |what: &str, secs: f64, min: f64| {
            if secs.is_finite() && secs >= min && secs <= 86_400.0 {
                Ok(())
            } else {
                Err(format!("{what} must be between {min} and 86400 seconds"))
            }
        };
        if let Some(w) = &self.wander {
            if !(w.hz.is_finite() && w.hz > 0.0 && w.hz <= 128.0) {
                return Err("wander.hz must be in (0, 128]".into());
            }
            if !(w.speed.is_finite() && (0.0..=1000.0).contains(&w.speed)) {
                return Err("wander.speed must be in [0, 1000] m/s".into());
            }
            period("wander.turn_every_s", w.turn_every_s, 0.05)?;
        }
        if let Some(c) = &self.chat {
            period("chat.every_s", c.every_s, 0.05)?;
            weights("chat", &[c.global, c.nearby, c.whisper])?;
            if c.global + c.nearby + c.whisper == 0 {
                return Err("chat needs a non-zero weight in global, nearby or whisper".into());
            }
        }
        if let Some(i) = &self.inventory {
            period("inventory.every_s", i.every_s, 0.05)?;
            weights(
                "inventory",
                &[i.pick, i.drop, i.move_stack, i.use_item, i.give, i.trade],
            )?;
            if i.total() == 0 {
                return Err(
                    "inventory needs a non-zero weight in pick, drop, move, use, give or trade"
                        .into(),
                );
            }
            if !(i.seek_speed.is_finite() && i.seek_speed > 0.0 && i.seek_speed <= 1000.0) {
                return Err(
                    "inventory.seek_speed must be in (0, 1000] m/s: at 0 a bot walking to an \
                     item never reaches it"
                        .into(),
                );
            }
            if self.wander.is_none() {
                // Without movement input no snapshot comes: a bot would not
                // know where it is, walk to no item and pick up nothing.
                return Err(
                    "inventory needs a [wander] section: bots walk to the items they pick up, \
                     and learn where they are from the snapshots their movement starts"
                        .into(),
                );
            }
        }
        if let Some(c) = &self.churn {
            period("churn.session_s", c.session_s, 1.0)?;
            period("churn.pause_s", c.pause_s, 0.0)?;
        }
        Ok(())
    }
}

/// Most a single weight may be: weights are relative, and their sum must
/// not overflow.
const MAX_WEIGHT: u32 = 1_000_000;

fn weights(table: &str, values: &[u32]) -> Result<(), String> {
    if values.iter().any(|w| *w > MAX_WEIGHT) {
        return Err(format!(
            "{table} weights are relative: at most {MAX_WEIGHT} each"
        ));
    }
    Ok(())
}

impl Chat {
    /// The scope for a uniform draw `r` in `0.0..1.0`.
    pub(crate) fn pick(&self, r: f64) -> ChatScopeKind {
        let total = f64::from(self.global + self.nearby + self.whisper);
        let x = r * total;
        if x < f64::from(self.global) {
            ChatScopeKind::Global
        } else if x < f64::from(self.global + self.nearby) {
            ChatScopeKind::Nearby
        } else {
            ChatScopeKind::Whisper
        }
    }
}

impl Inventory {
    /// The operation for a uniform draw `r` in `0.0..1.0`.
    pub(crate) fn pick_op(&self, r: f64) -> InventoryOp {
        let weights = [
            (self.pick, InventoryOp::Pick),
            (self.drop, InventoryOp::Drop),
            (self.move_stack, InventoryOp::Move),
            (self.use_item, InventoryOp::Use),
            (self.give, InventoryOp::Give),
            (self.trade, InventoryOp::Trade),
        ];
        let x = r * f64::from(self.total());
        let mut upto = 0.0;
        for (weight, op) in weights {
            upto += f64::from(weight);
            if x < upto {
                return op;
            }
        }
        InventoryOp::Trade
    }

    fn total(&self) -> u32 {
        self.pick + self.drop + self.move_stack + self.use_item + self.give + self.trade
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> Scenario {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../assets/scenarios")
            .join(name);
        Scenario::load(&path).unwrap()
    }

    #[test]
    fn the_shipped_default_moves_at_30_hz_and_chats_every_5_s() {
        let s = shipped("default.toml");
        assert_eq!(s.wander.as_ref().map(|w| w.hz), Some(30.0));
        assert_eq!(s.chat.as_ref().map(|c| c.every_s), Some(5.0));
        assert!(s.churn.is_none());
        assert_eq!(Scenario::parse(DEFAULT_TOML, "builtin").unwrap(), s);
    }

    #[test]
    fn the_shipped_trade_scenario_is_inventory_heavy() {
        let s = shipped("trade.toml");
        let inv = s.inventory.unwrap();
        assert!(inv.every_s <= 1.0);
        assert!(inv.trade >= inv.pick && inv.trade >= inv.drop);
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap();
                count += 1;
            }
        }
        assert!(count >= 2);
    }

    #[test]
    fn missing_sections_turn_behaviours_off() {
        let s = Scenario::parse("name = \"idle\"", "t").unwrap();
        assert!(s.wander.is_none() && s.chat.is_none() && s.inventory.is_none());
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let typo = Scenario::parse("name = \"x\"\n[chat]\nevery = 5.0\nglobal = 1", "t");
        assert!(matches!(typo, Err(ScenarioError::Parse { .. })), "{typo:?}");
        let zero = Scenario::parse("name = \"x\"\n[chat]\nevery_s = 5.0", "t");
        assert!(
            matches!(zero, Err(ScenarioError::Invalid { .. })),
            "{zero:?}"
        );
        let fast = Scenario::parse(
            "name = \"x\"\n[wander]\nhz = 1000.0\nspeed = 1.0\nturn_every_s = 1.0",
            "t",
        );
        assert!(matches!(fast, Err(ScenarioError::Invalid { .. })));
        let still = Scenario::parse("name = \"x\"\n[inventory]\nevery_s = 5.0\npick = 1", "t");
        match still {
            Err(ScenarioError::Invalid { message, .. }) => {
                assert!(message.contains("[wander]"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let nan = Scenario::parse("name = \"x\"\n[churn]\nsession_s = nan\npause_s = 1.0", "t");
        assert!(matches!(nan, Err(ScenarioError::Invalid { .. })));
        // Sums that would wrap (to 1, in a release build) are refused.
        for table in [
            "[chat]\nevery_s = 5.0\nglobal = 2147483648\nnearby = 2147483648\nwhisper = 1",
            "[inventory]\nevery_s = 5.0\npick = 4294967295\ndrop = 1",
        ] {
            let huge = Scenario::parse(&format!("name = \"x\"\n{table}"), "t");
            assert!(
                matches!(huge, Err(ScenarioError::Invalid { .. })),
                "{huge:?}"
            );
        }
    }

    /// A bot walking to an item at 0 m/s never reaches it: the scenario
    /// is refused, naming the key. Standing still while wandering is a
    /// load of its own (input and snapshots, no movement) and stays.
    #[test]
    fn a_seek_speed_of_zero_is_refused() {
        let scenario = |wander_speed: &str, seek_speed: &str| {
            Scenario::parse(
                &format!(
                    "name = \"x\"\n[wander]\nhz = 30.0\nspeed = {wander_speed}\n\
                     turn_every_s = 1.0\n[inventory]\nevery_s = 1.0\npick = 1\n\
                     seek_speed = {seek_speed}\n"
                ),
                "t",
            )
        };
        for seek_speed in ["0.0", "0", "-1.0", "1001.0", "nan"] {
            match scenario("3.0", seek_speed) {
                Err(ScenarioError::Invalid { message, .. }) => {
                    assert!(message.contains("inventory.seek_speed"), "{message}");
                }
                other => panic!("seek_speed = {seek_speed}: {other:?}"),
            }
        }
        let still = scenario("0.0", "0.5").unwrap();
        assert_eq!(still.wander.map(|w| w.speed), Some(0.0));
        assert_eq!(still.inventory.map(|i| i.seek_speed), Some(0.5));
    }

    #[test]
    fn weights_choose_proportionally() {
        let chat = Chat {
            every_s: 1.0,
            global: 1,
            nearby: 2,
            whisper: 1,
        };
        assert_eq!(chat.pick(0.0), ChatScopeKind::Global);
        assert_eq!(chat.pick(0.3), ChatScopeKind::Nearby);
        assert_eq!(chat.pick(0.74), ChatScopeKind::Nearby);
        assert_eq!(chat.pick(0.99), ChatScopeKind::Whisper);
        let inv = Inventory {
            every_s: 1.0,
            pick: 0,
            drop: 0,
            move_stack: 0,
            use_item: 1,
            give: 0,
            trade: 3,
            seek_speed: 6.0,
        };
        assert_eq!(inv.pick_op(0.0), InventoryOp::Use);
        assert_eq!(inv.pick_op(0.3), InventoryOp::Trade);
        assert_eq!(inv.pick_op(0.999), InventoryOp::Trade);
    }
}
