//! Request-path logic, pure and crate-free: normalization ([`normalize_path`], and
//! [`normalize_prefix`] for configured route paths), the reading routes match on
//! ([`match_path`] drops `;parameters`), and whether an absolute-form target and `Host` name
//! the same server ([`same_authority`]). Shared by config checking and the route table, so
//! neither depends on the other for it. No I/O, no clock; the common path does not allocate.

use std::borrow::Cow;

/// The path routes are matched on, given a normalized path: each segment without its
/// `;parameters` (`%3B` counts as `;`, for an upstream that decodes before it splits), and a
/// segment left empty by that dropped, as a servlet container reads the path:
/// `/admin;jsessionid=x/secret` is `/admin/secret`, `/;x/admin` is `/admin`, `/admin;x/` is
/// `/admin/`. A path without parameters comes back borrowed.
///
/// What is forwarded upstream keeps its parameters (the route table's `upstream_path`);
/// [`normalize_path`] has already refused a dot segment carrying them.
pub fn match_path(path: &str) -> Cow<'_, str> {
    if !has_params(path) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut trailing_slash = false;
    for seg in path.split('/').skip(1) {
        let head = segment_head(seg);
        trailing_slash = head.is_empty();
        if !trailing_slash {
            out.push('/');
            out.push_str(head);
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Whether `path` holds a `;`, raw or as `%3B`/`%3b`. One `memchr` pass over the path for
/// either byte: every request's path is asked (routing and the upstream rewrite), and
/// `str::contains` sets up a substring searcher for each of the two spellings.
pub(crate) fn has_params(path: &str) -> bool {
    let b = path.as_bytes();
    memchr::memchr2_iter(b';', b'%', b).any(|i| {
        b.get(i) == Some(&b';') || matches!(b.get(i + 1..i + 3), Some([b'3', b'b' | b'B']))
    })
}

/// A segment up to its first `;` (raw or `%3B`).
pub(crate) fn segment_head(seg: &str) -> &str {
    let bytes = seg.as_bytes();
    let end = (0..bytes.len())
        .find(|&i| {
            bytes[i] == b';'
                || (bytes[i] == b'%'
                    && bytes.get(i + 1) == Some(&b'3')
                    && matches!(bytes.get(i + 2), Some(b'B' | b'b')))
        })
        .unwrap_or(bytes.len());
    &seg[..end]
}

/// `path` after its first `n` segments that are not empty in [`match_path`]'s reading
/// (empty when nothing follows).
pub(crate) fn strip_segments(path: &str, n: usize) -> &str {
    let mut seen = 0;
    let mut at = 0;
    while seen < n && at < path.len() {
        let rest = &path[at + 1..];
        let len = rest.find('/').unwrap_or(rest.len());
        if !segment_head(&rest[..len]).is_empty() {
            seen += 1;
        }
        at += 1 + len;
    }
    &path[at.min(path.len())..]
}

/// Whether an absolute-form target's authority and a `Host` name the same server: hosts
/// compared without case (and without a trailing dot), ports after the scheme's default is
/// filled in (`http://a.example/` and `Host: A.example:80` agree). `scheme` is the target's,
/// e.g. `http`.
pub fn same_authority(scheme: &str, authority: &str, host: &str) -> bool {
    let default_port = if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss")
    {
        443
    } else {
        80
    };
    let port = |a: &str| -> Option<u16> {
        match port_of(a) {
            None | Some("") => Some(default_port),
            Some(p) => p.parse().ok(),
        }
    };
    host_without_port(authority).eq_ignore_ascii_case(host_without_port(host))
        && port(authority).is_some()
        && port(authority) == port(host)
}

/// The port of an authority, `None` when it has none (`[::1]` has none, `[::1]:80` has `80`).
fn port_of(authority: &str) -> Option<&str> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        authority[end + 1..].strip_prefix(':')
    } else {
        authority.rsplit_once(':').map(|(_, port)| port)
    }
}

/// `api.example.com:443` -> `api.example.com`, `[::1]:8080` -> `[::1]`; a trailing dot
/// (the fully qualified spelling of the same name) is dropped too.
pub(crate) fn host_without_port(authority: &str) -> &str {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _port)| h)
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// Why a request path was refused; the caller answers 400 `bad_request`.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path contains an encoded '/' or '\\' (%2F, %5C)")]
    EncodedSlash,
    #[error("path climbs above the root with '..'")]
    EscapesRoot,
    #[error(
        "path contains an invalid percent-escape, a NUL, a backslash, a space or a control character"
    )]
    BadEncoding,
    /// `..;x` is `..` to servlet containers (Tomcat, Jetty): refused rather than guessed at.
    #[error("path has a '.' or '..' segment carrying ';' parameters")]
    DotSegmentParams,
}

/// Normalize a request path (the part before `?`), so that `/public/../admin` can never reach
/// a protected route under a public route's policy. The result is what the caller matches
/// routes against and forwards upstream.
///
/// - Percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`, notably `%2e`) are decoded;
///   other escapes are kept, with uppercase hex.
/// - Encoded `/` or `\` (`%2F`, `%5C`) is refused ([`PathError::EncodedSlash`]); so are raw
///   `\`, NUL (raw or `%00`), space, control characters and malformed escapes
///   ([`PathError::BadEncoding`]).
/// - Runs of `/` collapse; `.` and `..` segments are resolved, and `..` above the root is
///   refused ([`PathError::EscapesRoot`]); a trailing slash is kept (`/a/b/` stays `/a/b/`,
///   and `/a/b/..` is `/a/`).
///
/// An already normal path comes back borrowed, without allocating.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if needs_rewrite(path.as_bytes())? {
        rewrite(path).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(path))
    }
}

/// A configured route path in the form the route table holds it (`Route::prefix`): normalized like a request
/// path, without a trailing slash (except `/`). Config can call this to refuse bad paths at load.
pub fn normalize_prefix(path: &str) -> Result<String, PathError> {
    let normal = normalize_path(path)?;
    let prefix = match normal.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed,
        _ => &normal,
    };
    Ok(prefix.to_owned())
}

/// One pass over an absolute path: every byte-level refusal, and whether anything needs
/// rewriting. Dot segments are only flagged; [`rewrite`] resolves or refuses them.
fn needs_rewrite(path: &[u8]) -> Result<bool, PathError> {
    let mut rewrite = false;
    let mut seg_start = 1;
    let mut i = 1;
    loop {
        match path.get(i).copied() {
            end @ (None | Some(b'/')) => {
                let seg = path.get(seg_start..i).unwrap_or_default();
                // An empty segment is fine only as the last one: a trailing slash, or "/".
                if (seg.is_empty() && end.is_some()) || is_dot_head(seg) {
                    rewrite = true;
                }
                if end.is_none() {
                    return Ok(rewrite);
                }
                seg_start = i + 1;
                i += 1;
            }
            Some(b'%') => {
                let (byte, lowercase) = escape_at(path, i)?;
                if lowercase || is_unreserved(byte) {
                    rewrite = true;
                }
                i += 3;
            }
            Some(b) => {
                check_raw(b)?;
                i += 1;
            }
        }
    }
}

/// The slow path: decode, then resolve segments into a fresh string.
fn rewrite(path: &str) -> Result<String, PathError> {
    // Decoding never yields '/', so segment boundaries are the same before and after.
    let mut decoded = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(pos) = rest.find('%') {
        let (head, tail) = rest.split_at(pos);
        decoded.push_str(head);
        let (byte, _) = escape_at(tail.as_bytes(), 0)?;
        if is_unreserved(byte) {
            decoded.push(char::from(byte));
        } else {
            push_escape(&mut decoded, byte);
        }
        rest = tail.get(3..).unwrap_or_default();
    }
    decoded.push_str(rest);

    let mut out = String::with_capacity(decoded.len());
    let mut trailing_slash = false;
    for seg in decoded.split('/').skip(1) {
        trailing_slash = false;
        match seg {
            "" | "." => trailing_slash = true,
            ".." => {
                let parent = out.rfind('/').ok_or(PathError::EscapesRoot)?;
                out.truncate(parent);
                trailing_slash = true;
            }
            _ if is_dot_head(seg.as_bytes()) => return Err(PathError::DotSegmentParams),
            _ => {
                out.push('/');
                out.push_str(seg);
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether a segment is `.` or `..`, with or without `;` parameters.
fn is_dot_head(seg: &[u8]) -> bool {
    // The head is a prefix of the segment: most segments are ruled out by their first byte.
    if seg.first() != Some(&b'.') {
        return false;
    }
    // `%3B` counts as `;`: `..%3Bx` is `..` to an upstream that decodes, then splits.
    let head = std::str::from_utf8(seg).map_or(seg, |s| segment_head(s).as_bytes());
    let head = head.split(|&b| b == b';').next().unwrap_or_default();
    head == b"." || head == b".."
}

/// Decode the escape at `path[pos] == '%'`: its byte, and whether its hex had lowercase letters.
fn escape_at(path: &[u8], pos: usize) -> Result<(u8, bool), PathError> {
    let digit = |at: usize| path.get(at).copied().and_then(hex_value);
    let (Some((hi, hi_lower)), Some((lo, lo_lower))) = (digit(pos + 1), digit(pos + 2)) else {
        return Err(PathError::BadEncoding);
    };
    let byte = (hi << 4) | lo;
    match byte {
        b'/' | b'\\' => Err(PathError::EncodedSlash),
        0 => Err(PathError::BadEncoding),
        _ => Ok((byte, hi_lower || lo_lower)),
    }
}

fn hex_value(b: u8) -> Option<(u8, bool)> {
    match b {
        b'0'..=b'9' => Some((b - b'0', false)),
        b'A'..=b'F' => Some((b - b'A' + 10, false)),
        b'a'..=b'f' => Some((b - b'a' + 10, true)),
        _ => None,
    }
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0f)]));
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A raw backslash is a separator to some upstreams; NUL, space and controls are never valid.
fn check_raw(b: u8) -> Result<(), PathError> {
    if b == b'\\' || b <= b' ' || b == 0x7f {
        Err(PathError::BadEncoding)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The one-pass scan finds exactly what the three substring searches did.
        #[test]
        fn has_params_is_the_three_substring_searches(
            path in proptest::collection::vec(proptest::sample::select(b"/a;%3bB".to_vec()), 0..24),
        ) {
            let path = String::from_utf8(path).unwrap_or_default();
            let want = path.contains(';') || path.contains("%3B") || path.contains("%3b");
            proptest::prop_assert_eq!(has_params(&path), want, "{}", path);
        }
    }

    // ---- normalization --------------------------------------------------------------------

    #[test]
    fn encoded_slash_is_rejected() {
        for path in [
            "/public/..%2fadmin",
            "/public%2F..%2Fadmin",
            "/a%2f",
            "/%2F",
        ] {
            assert_eq!(normalize_path(path), Err(PathError::EncodedSlash), "{path}");
        }
    }

    #[test]
    fn backslash_raw_or_encoded_is_rejected() {
        assert_eq!(
            normalize_path("/public/..%5cadmin"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            normalize_path("/public/..%5Cadmin"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            normalize_path("/public/..\\admin"),
            Err(PathError::BadEncoding)
        );
    }

    #[test]
    fn nul_and_controls_are_rejected() {
        for path in [
            "/a%00", "/a\0b", "/a\nb", "/a\rb", "/a\tb", "/a b", "/a\x7fb",
        ] {
            assert_eq!(
                normalize_path(path),
                Err(PathError::BadEncoding),
                "{path:?}"
            );
        }
    }

    #[test]
    fn invalid_percent_escapes_are_rejected() {
        for path in ["/%", "/a%", "/a%2", "/a%g0", "/a%0g", "/%%41", "/a%-1"] {
            assert_eq!(normalize_path(path), Err(PathError::BadEncoding), "{path}");
        }
    }

    #[test]
    fn double_slashes_collapse() {
        assert_eq!(normalize_path("//admin").as_deref(), Ok("/admin"));
        assert_eq!(
            normalize_path("/public//..//admin").as_deref(),
            Ok("/admin")
        );
        assert_eq!(normalize_path("/a///b//").as_deref(), Ok("/a/b/"));
        assert_eq!(normalize_path("//").as_deref(), Ok("/"));
    }

    #[test]
    fn escape_above_root_rejected() {
        for path in [
            "/..",
            "/../",
            "/../admin",
            "/a/../..",
            "/a/b/../../../c",
            "/%2e%2e/x",
        ] {
            assert_eq!(normalize_path(path), Err(PathError::EscapesRoot), "{path}");
        }
    }

    #[test]
    fn dot_segment_with_params_rejected() {
        for path in [
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/a/.;/b",
            "/%2e%2e;/x",
        ] {
            assert_eq!(
                normalize_path(path),
                Err(PathError::DotSegmentParams),
                "{path}"
            );
        }
        // ';' elsewhere in a segment is ordinary.
        assert!(matches!(
            normalize_path("/a;b/..c;/;x"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn relative_path_rejected() {
        for path in ["", "admin", "*", "./admin", "%2Fadmin"] {
            assert_eq!(normalize_path(path), Err(PathError::NotAbsolute), "{path}");
        }
    }

    #[test]
    fn normal_path_is_borrowed() {
        for path in [
            "/",
            "/a",
            "/a/b/",
            "/api/v2/items",
            "/caf%C3%A9",
            "/a;b=c",
            "/~u/.x/x./...",
            "/é",
        ] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    /// Input -> expected normal form or refusal.
    #[test]
    fn normalization_table() {
        use PathError::*;
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/a/b", Ok("/a/b")),
            ("/a/b/", Ok("/a/b/")),
            ("/a/./b", Ok("/a/b")),
            ("/a/b/.", Ok("/a/b/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/../", Ok("/a/")),
            ("/a/b/../c", Ok("/a/c")),
            ("/a/..", Ok("/")),
            ("/.", Ok("/")),
            ("/./", Ok("/")),
            ("/./a", Ok("/a")),
            ("///a//b///", Ok("/a/b/")),
            ("/...", Ok("/...")),
            ("/a/.../b", Ok("/a/.../b")),
            ("/.a/a./..a", Ok("/.a/a./..a")),
            ("/%41%62%63", Ok("/Abc")),
            ("/%7e%5F%2D%2e", Ok("/~_-.")),
            ("/%3a%3A", Ok("/%3A%3A")),
            ("/%c3%a9", Ok("/%C3%A9")),
            ("/%25", Ok("/%25")),
            ("/%2541", Ok("/%2541")),
            ("/a%20b", Ok("/a%20b")),
            ("/a?b", Ok("/a?b")),
            ("/a/%2e", Ok("/a/")),
            ("/a/%2e%2e", Ok("/")),
            ("/a/b/%2E%2E/%2e/c/", Ok("/a/c/")),
            ("/a/..%2e", Ok("/a/...")),
            ("", Err(NotAbsolute)),
            ("a/b", Err(NotAbsolute)),
            ("/..", Err(EscapesRoot)),
            ("/a/../../b", Err(EscapesRoot)),
            ("/%2f", Err(EncodedSlash)),
            ("/%5c", Err(EncodedSlash)),
            ("/\\", Err(BadEncoding)),
            ("/%00", Err(BadEncoding)),
            ("/%zz", Err(BadEncoding)),
            ("/%2", Err(BadEncoding)),
            ("/..;", Err(DotSegmentParams)),
        ];
        for &(input, expected) in cases {
            let got = normalize_path(input);
            assert_eq!(got.as_deref().map_err(|e| *e), expected, "input {input:?}");
            if let Ok(out) = &got {
                assert_eq!(matches!(out, Cow::Borrowed(_)), *out == input, "{input:?}");
                assert!(
                    matches!(normalize_path(out), Ok(Cow::Borrowed(_))),
                    "{input:?}"
                );
            }
        }
    }

    /// Every short path over a hostile alphabet: no panic, every result is its own normal
    /// form (borrowed), with no empty or dot segment left for an upstream to reinterpret.
    #[test]
    fn normalized_paths_are_fixed_points() {
        const ALPHABET: &[char] = &['/', '.', 'a', '%', '2', 'e', 'f', ';', 'E'];
        let mut paths = vec![String::from("/")];
        let mut frontier = paths.clone();
        for _ in 0..5 {
            let next: Vec<String> = frontier
                .iter()
                .flat_map(|p| ALPHABET.iter().map(move |c| format!("{p}{c}")))
                .collect();
            paths.extend(next.iter().cloned());
            frontier = next;
        }
        for input in &paths {
            let Ok(out) = normalize_path(input) else {
                continue;
            };
            assert!(out.starts_with('/'), "{input:?} -> {out:?}");
            assert_eq!(
                matches!(out, Cow::Borrowed(_)),
                out == input.as_str(),
                "{input:?}"
            );
            assert!(
                matches!(normalize_path(&out), Ok(Cow::Borrowed(_))),
                "{input:?}"
            );
            let segments: Vec<&str> = out.split('/').skip(1).collect();
            let last = segments.len() - 1;
            for (i, seg) in segments.iter().enumerate() {
                assert!(!seg.is_empty() || i == last, "{input:?} -> {out:?}");
                assert!(!is_dot_head(seg.as_bytes()), "{input:?} -> {out:?}");
                assert!(
                    !seg.contains("%2e") && !seg.contains("%2E"),
                    "{input:?} -> {out:?}"
                );
            }
        }
    }

    #[test]
    fn path_params_are_removed_from_each_segment() {
        let cases = [
            ("/admin;jsessionid=x/secret", "/admin/secret"),
            ("/a;x/b;y/c;z", "/a/b/c"),
            ("/a;x/", "/a/"),
            ("/a/;x", "/a/"),
            ("/;x/a", "/a"),
            ("/;x", "/"),
            ("/a%3Bb/c", "/a/c"),
            ("/a;b%3Bc/d", "/a/d"),
        ];
        for (input, expected) in cases {
            assert_eq!(match_path(input), expected, "{input}");
        }
    }

    #[test]
    fn path_without_params_is_matched_as_is() {
        for path in ["/", "/admin/secret", "/a/b/", "/caf%C3%A9", "/a%3Ab"] {
            assert!(
                matches!(match_path(path), Cow::Borrowed(p) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segment_with_encoded_params_rejected() {
        for path in ["/public/..%3Bx/admin", "/public/..%3b/admin", "/a/.%3Bx/b"] {
            assert_eq!(
                normalize_path(path),
                Err(PathError::DotSegmentParams),
                "{path}"
            );
        }
    }

    #[test]
    fn same_authority_ignores_case_and_default_port() {
        for (scheme, authority, host) in [
            ("http", "api.example.com", "api.example.com"),
            ("http", "api.example.com", "API.Example.com"),
            ("http", "api.example.com:80", "api.example.com"),
            ("http", "api.example.com", "api.example.com:80"),
            ("HTTP", "api.example.com:", "api.example.com"),
            ("https", "api.example.com", "api.example.com:443"),
            ("http", "api.example.com:8080", "api.example.com:8080"),
            ("http", "[::1]", "[::1]:80"),
        ] {
            assert!(
                same_authority(scheme, authority, host),
                "{scheme} {authority} {host}"
            );
        }
    }

    #[test]
    fn different_authority_is_refused() {
        for (scheme, authority, host) in [
            ("http", "api.example.com", "other.example.com"),
            ("http", "api.example.com:8080", "api.example.com"),
            ("https", "api.example.com", "api.example.com:80"),
            ("http", "api.example.com:x", "api.example.com:x"),
            ("http", "api.example.com", "api.example.com.evil"),
        ] {
            assert!(
                !same_authority(scheme, authority, host),
                "{scheme} {authority} {host}"
            );
        }
    }
}
