//! `${NAME}` substitution, with a map from positions in the substituted text back to the
//! file, so every later error still points at what the operator wrote.

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

/// Why one `${...}` could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum SubstError {
    #[error("unterminated `${{`")]
    Unterminated,
    #[error("`${{{0}}}` is not a variable reference: expected `${{NAME}}` or `${{NAME:-default}}`")]
    NotAReference(String),
    #[error("environment variable `{0}` is not set (give a default with `${{{0}:-...}}`)")]
    Unset(String),
}

/// A substitution error at its 1-based (line, col) in the file: the `$` that starts it.
type Located = (usize, usize, SubstError);

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
                        errors.push((line_no + 1, i + 1, SubstError::Unterminated));
                        break;
                    };
                    let inner: String = chars[i + 2..i + 2 + len].iter().collect();
                    match expand(&inner, env) {
                        Ok(value) => (value, len + 3),
                        Err(e) => {
                            errors.push((line_no + 1, i + 1, e));
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

fn expand(inner: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, SubstError> {
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
        return Err(SubstError::NotAReference(inner.to_owned()));
    }
    match (env(name), default) {
        (Some(v), Some(d)) if v.is_empty() => Ok(d.to_owned()),
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_owned()),
        (None, None) => Err(SubstError::Unset(name.to_owned())),
    }
}
