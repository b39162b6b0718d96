//! The YAML front end, on serde-saphyr alone: the text read into raw shapes, and the position
//! of every node by path (`routes[1].upstreams[0]`) for errors found after deserializing.
//! Parser and serde errors come out located in the file, named by the node they point at.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, MessageFormatter, Spanned, UserMessageFormatter};

use super::ConfigError;
use super::source::SourceMap;

/// 1-based (line, col) in the substituted text, in chars.
type Pos = (usize, usize);

/// Reads one YAML document into `T`, with the positions of its nodes. Both come from the same
/// parser: serde's derive hands back no positions, so a second read of the text into a
/// [`Tree`] of spans gives them, and it can never disagree with the first about the text.
pub(super) fn deserialize<T: DeserializeOwned>(
    text: &str,
    map: &SourceMap,
    file: &Path,
) -> Result<(T, Marks), Vec<ConfigError>> {
    let located = |e: serde_saphyr::Error, marks: Option<&Marks>| {
        let at = e.location().map_or((1, 1), |l| pos(&l));
        let owner = marks.and_then(|m| Some((m, m.owner(at)?)));
        // serde-saphyr puts a missing field at the mapping's last key; the operator looks for
        // the mapping, where `check` also puts its "is required" errors.
        let at = match (e.without_snippet(), owner) {
            (serde_saphyr::Error::SerdeMissingField { .. }, Some((m, path))) => m.find(path),
            _ => at,
        };
        let (at, message) = match (tab_indent(text, at, &e), owner.map(|(_, p)| p)) {
            (Some(tab), _) => (tab, TAB_INDENT.to_owned()),
            (None, Some(path)) if !path.is_empty() => {
                (at, format!("{path}: {}", message(&e, text)))
            }
            (None, _) => (at, message(&e, text).into_owned()),
        };
        let (line, col) = map.to_orig(at);
        vec![ConfigError {
            file: file.to_owned(),
            line,
            col,
            message,
        }]
    };
    // Syntax, duplicate keys, a second document or none at all fail here, before any shape.
    let tree: Spanned<Tree> =
        serde_saphyr::from_str_with_options(text, options()).map_err(|e| located(e, None))?;
    let marks = Marks::build(&tree);
    let value = serde_saphyr::from_str_with_options(text, options())
        .map_err(|e| located(e, Some(&marks)))?;
    Ok((value, marks))
}

fn options() -> serde_saphyr::Options {
    // The location is given up front as FILE:LINE:COL; a snippet would repeat it, in the
    // substituted text's lines.
    // Merge keys stay ordinary keys, as under serde_yaml: `<<` is then an unknown field.
    serde_saphyr::options! {
        with_snippet: false,
        merge_keys: serde_saphyr::MergeKeyPolicy::AsOrdinary,
    }
}

/// The message alone: the location goes in front, mapped back to the file.
fn message<'e>(e: &'e serde_saphyr::Error, text: &str) -> Cow<'e, str> {
    let e = e.without_snippet();
    let message = match e {
        serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => {
            Cow::Owned(format!("duplicate key `{key}`"))
        }
        serde_saphyr::Error::DuplicateMappingKey { key: None, .. } => {
            Cow::Borrowed("duplicate key")
        }
        serde_saphyr::Error::MultipleDocuments { .. } => Cow::Borrowed(
            "a second YAML document: the file must hold exactly one (remove the `---`)",
        ),
        serde_saphyr::Error::Eof { .. } if is_blank(text) => {
            Cow::Borrowed("no YAML document: the file is empty or only comments")
        }
        serde_saphyr::Error::InvalidScalar { ty, .. } => {
            Cow::Owned(format!("expected {}", scalar_kind(ty)))
        }
        _ => UserMessageFormatter.format_message(e),
    };
    // The text may quote the file (a key's name); keep control characters off the terminal.
    if message.chars().any(char::is_control) {
        let escaped = message.chars().map(|c| match c {
            c if c.is_control() => c.escape_debug().to_string(),
            c => c.to_string(),
        });
        Cow::Owned(escaped.collect())
    } else {
        message
    }
}

fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

const TAB_INDENT: &str = "a tab in the indentation: YAML indents with spaces only";

/// Where a tab the parser tripped over indents a line. The parser reports the node it was
/// reading (often the line before, when a plain scalar may go on), not the tab itself.
fn tab_indent(text: &str, (line, _): Pos, e: &serde_saphyr::Error) -> Option<Pos> {
    if !message(e, text).contains("tab") {
        return None;
    }
    text.lines()
        .enumerate()
        .skip(line.saturating_sub(1))
        .find_map(|(i, l)| {
            let indent = l.chars().take_while(|c| *c == ' ' || *c == '\t');
            let col = indent.into_iter().position(|c| c == '\t')?;
            Some((i + 1, col + 1))
        })
}

/// A Rust scalar type in the words of a config file.
fn scalar_kind(ty: &str) -> Cow<'_, str> {
    let int = ty.len() > 1
        && ty.starts_with(['i', 'u'])
        && (ty[1..].bytes().all(|b| b.is_ascii_digit()) || &ty[1..] == "size");
    match ty {
        "boolean" | "bool" => Cow::Borrowed("`true` or `false`"),
        "floating point" | "f32" | "f64" => Cow::Borrowed("a number"),
        _ if int => Cow::Borrowed("a whole number"),
        _ => Cow::Owned(format!("a {ty}")),
    }
}

fn pos(l: &Location) -> Pos {
    let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    (n(l.line()), n(l.column()))
}

/// A document's shape with the span of every node, and nothing else of its values.
enum Tree {
    Scalar,
    Seq(Vec<Spanned<Tree>>),
    Map(Vec<(Spanned<Key>, Spanned<Tree>)>),
}

/// A mapping key's text as written (`01` stays `01`), as the raw shapes read it.
struct Key(String);

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tree;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_none<E: de::Error>(self) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
                Tree::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Tree::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Tree::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_owned()))
            }
        }
        // As text, not `any`: every key of the config and users file is a name.
        d.deserialize_str(V)
    }
}

/// Position of every node by path (`routes[1].upstreams[0]`), 1-based, in the substituted text.
pub(super) struct Marks {
    /// A scalar's own position; a collection's key (where an operator looks for a block).
    nodes: HashMap<String, Pos>,
    /// Each mapping key's position, for errors about the key itself.
    keys: HashMap<String, Pos>,
    /// The path a parser error at a position is about: a node's own, or a key's mapping.
    owners: HashMap<Pos, String>,
}

impl Marks {
    fn build(root: &Spanned<Tree>) -> Self {
        let mut marks = Marks {
            nodes: HashMap::new(),
            keys: HashMap::new(),
            owners: HashMap::new(),
        };
        marks.visit(String::new(), root);
        marks
    }

    /// Parents first, so where a mapping starts at its first key, that position names the
    /// mapping (an unknown or missing field is the mapping's fault).
    fn visit(&mut self, path: String, node: &Spanned<Tree>) {
        let own = pos(&node.referenced);
        self.owners.entry(own).or_insert_with(|| path.clone());
        let shown = match node.value {
            Tree::Scalar => own,
            _ => self.keys.get(&path).copied().unwrap_or(own),
        };
        self.nodes.insert(path.clone(), shown);
        match &node.value {
            Tree::Scalar => {}
            Tree::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.visit(format!("{path}[{i}]"), item);
                }
            }
            Tree::Map(entries) => {
                for (key, value) in entries {
                    let at = pos(&key.referenced);
                    self.owners.entry(at).or_insert_with(|| path.clone());
                    let child = join(&path, &key.value.0);
                    self.keys.insert(child.clone(), at);
                    self.visit(child, value);
                }
            }
        }
    }

    fn owner(&self, at: Pos) -> Option<&str> {
        self.owners.get(&at).map(String::as_str)
    }

    /// The position of the key that introduces `path`, else as `find`.
    pub(super) fn find_key(&self, path: &str) -> Pos {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.find(path))
    }

    /// The position of `path`, or of its nearest recorded ancestor.
    pub(super) fn find(&self, mut path: &str) -> Pos {
        loop {
            if let Some(&pos) = self.nodes.get(path) {
                return pos;
            }
            match path.rfind(['.', '[']) {
                Some(i) => path = &path[..i],
                None if !path.is_empty() => path = "",
                None => return (1, 1),
            }
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}
