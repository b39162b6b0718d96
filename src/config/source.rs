//! Where things are in the file: `${NAME}` substitution with a map from substituted positions
//! back to the file, and the position of every YAML node by path (`routes[1].upstreams[0]`).

use std::collections::HashMap;

// ---------------------------------------------------------------------------------------------
// `${NAME}` substitution, and the map from substituted positions back to the file.

/// Where a run of the substituted text came from: copied (`verbatim`) or produced by one
/// `${...}` (every position inside maps to its `$`).
#[derive(Debug)]
struct Segment {
    sub: usize,
    orig: usize,
    verbatim: bool,
}

/// Maps (line, col) in the text given to the YAML parsers back to the file, so an error inside
/// or after a substituted value still points at what the operator wrote. Positions are in chars.
#[derive(Debug)]
pub(super) struct SourceMap {
    segments: Vec<Segment>,
    sub_lines: Vec<usize>,
    orig_lines: Vec<usize>,
}

impl SourceMap {
    pub(super) fn identity(text: &str) -> Self {
        SourceMap {
            segments: vec![Segment {
                sub: 0,
                orig: 0,
                verbatim: true,
            }],
            sub_lines: line_starts(text),
            orig_lines: line_starts(text),
        }
    }

    /// 1-based (line, col) in the substituted text -> 1-based (line, col) in the file.
    pub(super) fn to_orig(&self, (line, col): (usize, usize)) -> (usize, usize) {
        let Some(start) = self.sub_lines.get(line.saturating_sub(1)) else {
            return (line.max(1), col.max(1));
        };
        let sub = start + col.saturating_sub(1);
        let i = self.segments.partition_point(|s| s.sub <= sub);
        let orig = match i.checked_sub(1).and_then(|i| self.segments.get(i)) {
            Some(s) if s.verbatim => s.orig + (sub - s.sub),
            Some(s) => s.orig,
            None => sub,
        };
        let line = self.orig_lines.partition_point(|&s| s <= orig).max(1);
        let start = self.orig_lines.get(line - 1).copied().unwrap_or(0);
        (line, orig - start + 1)
    }
}

fn line_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend(
        text.chars()
            .enumerate()
            .filter(|&(_, c)| c == '\n')
            .map(|(i, _)| i + 1),
    );
    starts
}

type Located = (usize, usize, String);

/// Replaces `${NAME}` and `${NAME:-default}` (default when unset or empty); `$${` writes `${`.
/// Whole-line comments are left alone, so a commented-out line may name an unset variable.
pub(super) fn substitute(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, SourceMap), Vec<Located>> {
    let mut out = String::with_capacity(text.len());
    let mut segments = vec![Segment {
        sub: 0,
        orig: 0,
        verbatim: true,
    }];
    let mut errors = Vec::new();
    let (mut sub, mut orig) = (0usize, 0usize);
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let chars: Vec<char> = line.chars().collect();
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            sub += chars.len();
            orig += chars.len();
            continue;
        }
        let mut i = 0;
        while i < chars.len() {
            let at = |k: usize| chars.get(i + k).copied();
            let (replacement, consumed) =
                if at(0) == Some('$') && at(1) == Some('$') && at(2) == Some('{') {
                    ("${".to_owned(), 3)
                } else if at(0) == Some('$') && at(1) == Some('{') {
                    let Some(len) = chars[i + 2..].iter().position(|&c| c == '}') else {
                        errors.push((line_no + 1, i + 1, "unterminated `${`".to_owned()));
                        break;
                    };
                    let inner: String = chars[i + 2..i + 2 + len].iter().collect();
                    match expand(&inner, env) {
                        Ok(value) => (value, len + 3),
                        Err(message) => {
                            errors.push((line_no + 1, i + 1, message));
                            (String::new(), len + 3)
                        }
                    }
                } else {
                    out.push(chars[i]);
                    sub += 1;
                    orig += 1;
                    i += 1;
                    continue;
                };
            segments.push(Segment {
                sub,
                orig,
                verbatim: false,
            });
            out.push_str(&replacement);
            sub += replacement.chars().count();
            orig += consumed;
            i += consumed;
            segments.push(Segment {
                sub,
                orig,
                verbatim: true,
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let map = SourceMap {
        segments,
        sub_lines: line_starts(&out),
        orig_lines: line_starts(text),
    };
    Ok((out, map))
}

fn expand(inner: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`${{{inner}}}` is not a variable reference: expected `${{NAME}}` or `${{NAME:-default}}`"
        ));
    }
    match (env(name), default) {
        (Some(v), Some(d)) if v.is_empty() => Ok(d.to_owned()),
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_owned()),
        (None, None) => Err(format!(
            "environment variable `{name}` is not set (give a default with `${{{name}:-...}}`)"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Node positions by path, for errors found after deserializing.

/// Position of every node by path (`routes[1].upstreams[0]`), 1-based, in the substituted text.
pub(super) struct Marks {
    /// A scalar's own position; a collection's key (where an operator looks for a block).
    nodes: HashMap<String, (usize, usize)>,
    /// Each mapping key's position, for errors about the key itself.
    keys: HashMap<String, (usize, usize)>,
}

enum Frame {
    /// `key` is `Some` once a key was read and its value is awaited; `Some(None)` for a
    /// non-scalar key, whose value gets no path.
    Map {
        path: Option<String>,
        key: Option<Option<String>>,
    },
    Seq {
        path: Option<String>,
        next: usize,
    },
}

impl Marks {
    pub(super) fn build(text: &str) -> Self {
        use yaml_rust2::Event;
        let mut nodes = HashMap::new();
        let mut keys = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = yaml_rust2::parser::Parser::new_from_str(text);
        // serde_yaml already accepted this text; if this parser disagrees, errors simply fall
        // back to the nearest known ancestor (or 1:1).
        while let Ok((event, mark)) = parser.next_token() {
            let pos = (mark.line(), mark.col() + 1);
            match event {
                Event::StreamEnd => break,
                Event::Scalar(value, ..) => match Self::child(&stack) {
                    Child::Key(parent) => {
                        if let Some(parent) = parent {
                            keys.insert(join(&parent, &value), pos);
                        }
                        Self::advance(&mut stack, Some(value));
                    }
                    Child::Value(path) => {
                        if let Some(path) = path {
                            nodes.insert(path, pos);
                        }
                        Self::advance(&mut stack, None);
                    }
                },
                Event::Alias(_) => {
                    if let Child::Value(Some(path)) = Self::child(&stack) {
                        nodes.insert(path, pos);
                    }
                    Self::advance(&mut stack, None);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = match Self::child(&stack) {
                        Child::Key(_) => None,
                        Child::Value(path) => path,
                    };
                    if let Some(path) = &path {
                        nodes.insert(path.clone(), keys.get(path).copied().unwrap_or(pos));
                    }
                    stack.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    Self::advance(&mut stack, None);
                }
                _ => {}
            }
        }
        Marks { nodes, keys }
    }

    fn child(stack: &[Frame]) -> Child {
        match stack.last() {
            None => Child::Value(Some(String::new())),
            Some(Frame::Map { path, key: None }) => Child::Key(path.clone()),
            Some(Frame::Map {
                path,
                key: Some(key),
            }) => Child::Value(path.as_ref().zip(key.as_ref()).map(|(p, k)| join(p, k))),
            Some(Frame::Seq { path, next }) => {
                Child::Value(path.as_ref().map(|p| format!("{p}[{next}]")))
            }
        }
    }

    /// A node just ended under the top frame; `scalar` is its text when it was a scalar key.
    fn advance(stack: &mut [Frame], scalar: Option<String>) {
        match stack.last_mut() {
            Some(Frame::Map { key, .. }) => {
                *key = match key {
                    None => Some(scalar),
                    Some(_) => None,
                };
            }
            Some(Frame::Seq { next, .. }) => *next += 1,
            None => {}
        }
    }

    /// The position of the key that introduces `path`, else as `find`.
    pub(super) fn find_key(&self, path: &str) -> (usize, usize) {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.find(path))
    }

    /// The position of `path`, or of its nearest recorded ancestor.
    pub(super) fn find(&self, mut path: &str) -> (usize, usize) {
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

enum Child {
    /// The node is a mapping key; the mapping's path.
    Key(Option<String>),
    /// The node is a value at this path (`None`: under a non-scalar key).
    Value(Option<String>),
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}
