//! The item catalogue (`assets/items.toml`), validated at start with
//! errors that name the file and the line.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use shared::protocol::inventory::ItemId;
use toml::Spanned;

/// The default catalogue, compiled in.
pub const EMBEDDED_CATALOGUE: &str = include_str!("../../../assets/items.toml");

/// Largest allowed `max_stack`.
pub const MAX_STACK_LIMIT: u32 = 9999;

/// Most items a catalogue may define.
pub const MAX_ITEMS: usize = 4096;

/// One item type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemDef {
    /// Its id.
    pub id: ItemId,
    /// Its display name.
    pub name: String,
    /// How many fit in one slot.
    pub max_stack: u32,
    /// Whether `use` consumes one.
    pub consumable: bool,
    /// Whether the world spawner mints it.
    pub spawn: bool,
}

/// A catalogue that could not be used: `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct CatalogueError {
    /// The file (or "(built-in catalogue)").
    pub file: String,
    /// The line, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalogue {
    #[serde(default)]
    item: Vec<Spanned<RawItem>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    id: Spanned<i64>,
    name: Spanned<String>,
    max_stack: Spanned<i64>,
    #[serde(default)]
    consumable: bool,
    #[serde(default)]
    spawn: bool,
}

/// The validated catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    items: BTreeMap<ItemId, ItemDef>,
    spawnable: Vec<ItemId>,
}

fn line_of(text: &str, span: Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Catalogue {
    /// Parses and validates a catalogue; `file` names it in errors.
    ///
    /// # Errors
    /// [`CatalogueError`] naming the line of the first problem: bad TOML,
    /// unknown keys, an id < 1 or repeated, an empty or repeated name, a
    /// `max_stack` outside 1..=9999, no items, too many items.
    pub fn parse(text: &str, file: &str) -> Result<Self, CatalogueError> {
        let error = |span: Range<usize>, message: String| CatalogueError {
            file: file.to_owned(),
            line: line_of(text, span),
            message,
        };
        let raw: RawCatalogue = toml::from_str(text)
            .map_err(|e| error(e.span().unwrap_or(0..0), e.message().trim_end().to_owned()))?;
        if raw.item.is_empty() {
            return Err(error(0..0, "the catalogue defines no [[item]]".to_owned()));
        }
        if raw.item.len() > MAX_ITEMS {
            return Err(error(
                raw.item[MAX_ITEMS].span(),
                format!("more than {MAX_ITEMS} items"),
            ));
        }
        let mut items = BTreeMap::new();
        let mut names = BTreeMap::new();
        for spanned in raw.item {
            let item = spanned.into_inner();
            let id = *item.id.get_ref();
            let id = match u32::try_from(id) {
                Ok(id) if id >= 1 => ItemId(id),
                _ => {
                    return Err(error(
                        item.id.span(),
                        format!("item id {id} must be between 1 and {}", u32::MAX),
                    ));
                }
            };
            if items.contains_key(&id) {
                return Err(error(
                    item.id.span(),
                    format!("item id {} is defined twice", id.0),
                ));
            }
            let name = item.name.get_ref().trim().to_owned();
            if name.is_empty() {
                return Err(error(item.name.span(), "item name is empty".to_owned()));
            }
            if names.insert(name.clone(), id).is_some() {
                return Err(error(
                    item.name.span(),
                    format!("item name {name:?} is used twice"),
                ));
            }
            let max_stack = *item.max_stack.get_ref();
            let max_stack = match u32::try_from(max_stack) {
                Ok(m) if (1..=MAX_STACK_LIMIT).contains(&m) => m,
                _ => {
                    return Err(error(
                        item.max_stack.span(),
                        format!("max_stack {max_stack} must be between 1 and {MAX_STACK_LIMIT}"),
                    ));
                }
            };
            items.insert(
                id,
                ItemDef {
                    id,
                    name,
                    max_stack,
                    consumable: item.consumable,
                    spawn: item.spawn,
                },
            );
        }
        let spawnable = items.values().filter(|d| d.spawn).map(|d| d.id).collect();
        Ok(Self { items, spawnable })
    }

    /// The built-in catalogue.
    ///
    /// # Errors
    /// Only if the embedded file is broken (a test guards against it).
    pub fn embedded() -> Result<Self, CatalogueError> {
        Self::parse(EMBEDDED_CATALOGUE, "assets/items.toml (built in)")
    }

    /// An item's definition.
    pub fn get(&self, id: ItemId) -> Option<&ItemDef> {
        self.items.get(&id)
    }

    /// Every item, by id.
    pub fn iter(&self) -> impl Iterator<Item = &ItemDef> {
        self.items.values()
    }

    /// The items the world spawner mints, by id.
    pub fn spawnable(&self) -> &[ItemId] {
        &self.spawnable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalogue_is_valid() {
        let catalogue = Catalogue::embedded().unwrap();
        assert!(catalogue.iter().count() >= 3);
        assert!(!catalogue.spawnable().is_empty());
        assert!(catalogue.iter().any(|d| d.consumable));
    }

    fn error_of(text: &str) -> CatalogueError {
        Catalogue::parse(text, "items.toml").unwrap_err()
    }

    #[test]
    fn mistakes_are_reported_with_file_and_line() {
        let item = |id: i64, name: &str, max: i64| {
            format!("[[item]]\nid = {id}\nname = \"{name}\"\nmax_stack = {max}\n\n")
        };
        let twice = format!("{}{}", item(1, "a", 5), item(1, "b", 5));
        let e = error_of(&twice);
        assert_eq!((e.file.as_str(), e.line), ("items.toml", 7));
        assert!(
            e.to_string()
                .starts_with("items.toml:7: item id 1 is defined twice")
        );

        let e = error_of(&format!("{}{}", item(1, "a", 5), item(2, "a", 5)));
        assert_eq!(e.line, 8);
        assert!(e.message.contains("used twice"));

        let e = error_of(&item(1, "a", 0));
        assert_eq!(e.line, 4);
        assert!(e.message.contains("max_stack 0"));

        let e = error_of(&item(0, "a", 1));
        assert_eq!(e.line, 2);

        let e = error_of(&item(3, " ", 1));
        assert_eq!(e.line, 3);

        let e = error_of("[[item]]\nid = 1\nname = \"a\"\nmax_stack = 1\ncolour = \"red\"\n");
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("colour"), "{e}");

        let e = error_of("[[item]]\nid = 1\nname = \"a\"\n");
        assert!(e.message.contains("max_stack"), "{e}");

        assert!(error_of("").message.contains("no [[item]]"));
    }
}
