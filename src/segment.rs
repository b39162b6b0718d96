//! Decoding one path segment that names something (`/admin/users/{id}`,
//! `/admin/sessions/{id}`, `/_session/{id}`) or an admin query value.
//!
//! Percent-decoding only, per RFC 3986: `+` is a literal plus (ids are often
//! e-mail addresses such as `a+b@x.com`); a space is written `%20`. Pure.

/// A segment that does not decode to UTF-8 text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path segment is not percent-encoded UTF-8")]
pub struct NotUtf8;

/// `%XX` decoded; anything else, `+` included, kept as written. A `%` not
/// followed by two hex digits stays a literal `%`.
pub fn percent_decode(s: &str) -> Result<String, NotUtf8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let escaped = (c == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_stays_a_plus() {
        assert_eq!(percent_decode("a+b@x.com").unwrap(), "a+b@x.com");
        assert_eq!(percent_decode("a%2Bb%40x.com").unwrap(), "a+b@x.com");
        assert_eq!(percent_decode("a%20b").unwrap(), "a b");
    }

    #[test]
    fn escapes_decode_and_stray_percents_stay() {
        assert_eq!(percent_decode("u-alice").unwrap(), "u-alice");
        assert_eq!(percent_decode("a%40b.c").unwrap(), "a@b.c");
        assert_eq!(percent_decode("50%").unwrap(), "50%");
        assert_eq!(percent_decode("%zz").unwrap(), "%zz");
        assert_eq!(percent_decode("%4").unwrap(), "%4");
        assert_eq!(percent_decode("%C3%A9").unwrap(), "é");
        assert_eq!(percent_decode("x%0ay").unwrap(), "x\ny");
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(percent_decode("%FF"), Err(NotUtf8));
        assert_eq!(percent_decode("%C3"), Err(NotUtf8));
    }
}
