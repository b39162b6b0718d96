//! Tickets (SPEC section 4): the compact JWT (HS256) codec and the key ring that signs and
//! verifies them. Pure code — no I/O, no clock: callers pass `now`. Also owns the random
//! material the gate mints: session ids and key secrets.
//!
//! The verify path runs on every request, so it allocates only for the returned [`Claims`]:
//! HMAC states are precomputed per key and cloned, the header and signature are decoded into
//! stack buffers, and the header is parsed with borrowed strings.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Tickets longer than this (in bytes) are rejected before any decoding.
pub const MAX_TICKET_LEN: usize = 8 * 1024;

/// Minimum decoded secret length the config should accept (SPEC section 3). Not enforced
/// here: [`Key::new`] takes any secret; config validation applies this bound.
pub const MIN_SECRET_LEN: usize = 32;

/// The only algorithm accepted and emitted.
pub const ALG: &str = "HS256";

/// HMAC-SHA256 output length in bytes.
const SIG_LEN: usize = 32;
/// base64url (no padding) length of a 32-byte signature.
const SIG_B64_LEN: usize = 43;
/// Decoded parts up to this size are decoded on the stack.
const STACK_DECODE_LEN: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

/// Strict base64url without padding; non-canonical trailing bits are rejected, so every
/// distinct encoded string decodes to distinct bytes (or fails).
const B64: GeneralPurpose = URL_SAFE_NO_PAD;

const SECRET_URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const SECRET_STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The ticket's claims (SPEC section 4). Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sid: String,
    pub sub: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    pub iat: u64,
    pub exp: u64,
}

/// A JOSE header as found in a ticket (owned; used by [`decode_unverified`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// Why a ticket (or secret) was refused. One variant per reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum TicketError {
    #[error("ticket longer than {MAX_TICKET_LEN} bytes")]
    TooLong,
    #[error("malformed ticket")]
    Malformed,
    #[error("unsupported algorithm (only HS256 is accepted)")]
    UnsupportedAlg,
    #[error("unknown or missing key id")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("ticket expired")]
    Expired,
    #[error("ticket issued in the future")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("no signing key configured")]
    NoSigningKey,
    #[error("invalid secret: expected base64url")]
    InvalidSecret,
}

impl TicketError {
    /// Stable snake_case name, for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            TicketError::TooLong => "too_long",
            TicketError::Malformed => "malformed",
            TicketError::UnsupportedAlg => "unsupported_alg",
            TicketError::UnknownKey => "unknown_key",
            TicketError::BadSignature => "bad_signature",
            TicketError::Expired => "expired",
            TicketError::NotYetValid => "not_yet_valid",
            TicketError::WrongIssuer => "wrong_issuer",
            TicketError::NoSigningKey => "no_signing_key",
            TicketError::InvalidSecret => "invalid_secret",
        }
    }
}

/// One HMAC key: a public id (the JWT `kid`) and a private secret.
#[derive(Clone)]
pub struct Key {
    pub id: String,
    secret: Vec<u8>,
}

impl Key {
    pub fn new(id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Key {
        Key {
            id: id.into(),
            secret: secret.into(),
        }
    }

    /// Length of the secret in bytes (for config validation; the secret itself stays private).
    pub fn secret_len(&self) -> usize {
        self.secret.len()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A key with its HMAC state precomputed (key schedule done once, cloned per use).
#[derive(Clone)]
struct RingKey {
    id: String,
    mac: HmacSha256,
}

/// The configured keys: the first signs, all verify (rotation). Immutable once built;
/// a config reload builds a new ring.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<RingKey>,
    issuer: String,
    leeway_secs: u64,
    /// base64url of the signing header, precomputed; `None` when the ring is empty.
    signing_header_b64: Option<String>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("kids", &self.key_ids().collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// Header as parsed on the verify path: borrowed strings, unknown members ignored.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    /// RFC 7515 §4.1.11: a `crit` we do not understand must be rejected; we understand none.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

impl KeyRing {
    /// Build a ring. `keys` should be non-empty; if it is empty, [`KeyRing::sign`] returns
    /// [`TicketError::NoSigningKey`] and every ticket fails with [`TicketError::UnknownKey`].
    /// If two keys share an id, the first one wins for verification.
    pub fn new(keys: Vec<Key>, issuer: String, leeway_secs: u64) -> KeyRing {
        let keys: Vec<RingKey> = keys
            .into_iter()
            .filter_map(|k| {
                // HMAC accepts keys of any length, so this never fails in practice.
                let mac = <HmacSha256 as Mac>::new_from_slice(&k.secret).ok()?;
                Some(RingKey { id: k.id, mac })
            })
            .collect();
        let signing_header_b64 = keys.first().and_then(|k| {
            let header = Header {
                alg: ALG.to_owned(),
                typ: Some("JWT".to_owned()),
                kid: Some(k.id.clone()),
            };
            serde_json::to_vec(&header)
                .ok()
                .map(|json| B64.encode(json))
        });
        KeyRing {
            keys,
            issuer,
            leeway_secs,
            signing_header_b64,
        }
    }

    /// The configured issuer (`iss` expected in every ticket).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Allowed clock skew in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// Id of the key that signs new tickets.
    pub fn signing_kid(&self) -> Option<&str> {
        self.keys.first().map(|k| k.id.as_str())
    }

    /// Ids of every key that verifies, signing key first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// Mint a ticket: header `{"alg":"HS256","typ":"JWT","kid":<first key id>}`, the claims
    /// as given (the caller sets `iss`, `iat`, `exp`). Fails with `TooLong` if the result
    /// would exceed [`MAX_TICKET_LEN`] (it could never be verified).
    pub fn sign(&self, claims: &Claims) -> Result<String, TicketError> {
        let (key, header_b64) = match (self.keys.first(), &self.signing_header_b64) {
            (Some(k), Some(h)) => (k, h),
            _ => return Err(TicketError::NoSigningKey),
        };
        // Serializing a `Claims` cannot fail (string keys, no floats); map defensively.
        let payload = serde_json::to_vec(claims).map_err(|_| TicketError::Malformed)?;
        let payload_len = payload.len().div_ceil(3) * 4;
        if header_b64.len() + payload_len + SIG_B64_LEN + 2 > MAX_TICKET_LEN {
            return Err(TicketError::TooLong);
        }
        let mut out = String::with_capacity(header_b64.len() + payload_len + SIG_B64_LEN + 2);
        out.push_str(header_b64);
        out.push('.');
        B64.encode_string(&payload, &mut out);
        let mut mac = key.mac.clone();
        mac.update(out.as_bytes());
        let sig = mac.finalize().into_bytes();
        out.push('.');
        B64.encode_string(sig, &mut out);
        if out.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong);
        }
        Ok(out)
    }

    /// Full check for admitting a request: structure, algorithm, key, signature (constant
    /// time), then claims: issuer, `exp + leeway > now`, `iat <= now + leeway`.
    /// The store must still confirm the session is `active` (SPEC section 4).
    pub fn verify(&self, ticket: &str, now_secs: u64) -> Result<Claims, TicketError> {
        let claims = self.verify_signature_only(ticket)?;
        if claims.iss != self.issuer {
            return Err(TicketError::WrongIssuer);
        }
        if claims.exp.saturating_add(self.leeway_secs) <= now_secs {
            return Err(TicketError::Expired);
        }
        if claims.iat > now_secs.saturating_add(self.leeway_secs) {
            return Err(TicketError::NotYetValid);
        }
        Ok(claims)
    }

    /// Structure, algorithm, key and signature only — no issuer or time checks
    /// (for `sessiongate ticket inspect`).
    pub fn verify_signature_only(&self, ticket: &str) -> Result<Claims, TicketError> {
        let payload_b64 = self.signed_payload(ticket)?;
        with_decoded(payload_b64, parse_owned::<Claims>)
    }

    /// Whether `ticket` carries a valid signature by one of this ring's keys,
    /// whatever its claims say (expired or not): such a ticket is this gate's
    /// credential and never travels upstream. No claims are decoded.
    pub fn is_signed(&self, ticket: &str) -> bool {
        self.signed_payload(ticket).is_ok()
    }

    /// Structure, algorithm, key and signature; the payload's base64url when
    /// they hold.
    fn signed_payload<'t>(&self, ticket: &'t str) -> Result<&'t str, TicketError> {
        let (header_b64, payload_b64, sig_b64) = split(ticket)?;

        let key = with_decoded(header_b64, |bytes| {
            let header: RawHeader<'_> = parse_object(bytes)?;
            if header.crit.is_some() {
                return Err(TicketError::Malformed);
            }
            if header.alg != ALG {
                return Err(TicketError::UnsupportedAlg);
            }
            let kid = header.kid.ok_or(TicketError::UnknownKey)?;
            self.keys
                .iter()
                .find(|k| k.id == kid)
                .ok_or(TicketError::UnknownKey)
        })?;

        if sig_b64.len() != SIG_B64_LEN {
            return Err(TicketError::BadSignature);
        }
        let mut sig = [0u8; SIG_LEN];
        let n = B64
            .decode_slice(sig_b64, &mut sig)
            .map_err(|_| TicketError::Malformed)?;
        // The signing input is the ticket up to the second dot.
        let signing_input_len = header_b64.len() + 1 + payload_b64.len();
        let signing_input = ticket
            .as_bytes()
            .get(..signing_input_len)
            .ok_or(TicketError::Malformed)?;
        let mut mac = key.mac.clone();
        mac.update(signing_input);
        let sig = sig.get(..n).ok_or(TicketError::BadSignature)?;
        mac.verify_slice(sig)
            .map_err(|_| TicketError::BadSignature)?;
        Ok(payload_b64)
    }
}

/// Decode header and claims without verifying anything (for `sessiongate ticket inspect`).
/// Still refuses tickets over [`MAX_TICKET_LEN`] and anything that is not three
/// base64url parts with JSON-object header and claims.
pub fn decode_unverified(ticket: &str) -> Result<(Header, serde_json::Value), TicketError> {
    let (header_b64, payload_b64, _sig) = split(ticket)?;
    let header = with_decoded(header_b64, parse_owned::<Header>)?;
    let claims = with_decoded(payload_b64, parse_owned::<serde_json::Value>)?;
    Ok((header, claims))
}

/// Fresh session id for `user_id`'s session: 144 random bits from the thread-local
/// CSPRNG (seeded from the OS), base64url without padding (24 characters), then the
/// owner's [`crate::session::user_tag`] (8 more): 32 characters in all.
pub fn new_session_id(user_id: &str) -> String {
    let mut bytes = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut sid = B64.encode(bytes);
    sid.push_str(&crate::session::user_tag(user_id));
    sid
}

/// 32 random bytes from the OS, base64url without padding (for `sessiongate keygen`).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    B64.encode(bytes)
}

/// Decode a base64url secret, with or without padding; the standard base64 alphabet is
/// accepted as a fallback. Surrounding whitespace is ignored. Empty input is an error.
pub fn decode_secret(s: &str) -> Result<Vec<u8>, TicketError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(TicketError::InvalidSecret);
    }
    SECRET_URL
        .decode(s)
        .or_else(|_| SECRET_STD.decode(s))
        .map_err(|_| TicketError::InvalidSecret)
}

/// Split a compact JWT into exactly three parts, after the length check.
fn split(ticket: &str) -> Result<(&str, &str, &str), TicketError> {
    if ticket.len() > MAX_TICKET_LEN {
        return Err(TicketError::TooLong);
    }
    let (header, rest) = ticket.split_once('.').ok_or(TicketError::Malformed)?;
    let (payload, sig) = rest.split_once('.').ok_or(TicketError::Malformed)?;
    if sig.contains('.') || header.is_empty() || payload.is_empty() {
        return Err(TicketError::Malformed);
    }
    Ok((header, payload, sig))
}

/// base64url-decode `part` (on the stack when small) and hand the bytes to `f`.
fn with_decoded<T>(
    part: &str,
    f: impl FnOnce(&[u8]) -> Result<T, TicketError>,
) -> Result<T, TicketError> {
    // Unpadded base64 of n chars decodes to at most n * 3 / 4 bytes.
    if part.len() / 4 * 3 + 3 <= STACK_DECODE_LEN {
        let mut buf = [0u8; STACK_DECODE_LEN];
        let n = B64
            .decode_slice(part, &mut buf)
            .map_err(|_| TicketError::Malformed)?;
        f(buf.get(..n).ok_or(TicketError::Malformed)?)
    } else {
        let bytes = B64.decode(part).map_err(|_| TicketError::Malformed)?;
        f(&bytes)
    }
}

/// Parse a JSON object (arrays are refused even where serde would map them onto a struct).
fn parse_object<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, TicketError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(bytes).map_err(|_| TicketError::Malformed),
        _ => Err(TicketError::Malformed),
    }
}

/// [`parse_object`] for owned types (usable as a plain `fn` for any input lifetime).
fn parse_owned<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, TicketError> {
    parse_object(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;
    const ISSUER: &str = "sessiongate";

    fn secret(fill: u8) -> Vec<u8> {
        vec![fill; 32]
    }

    fn ring() -> KeyRing {
        KeyRing::new(
            vec![Key::new("k1", secret(1)), Key::new("k0", secret(0))],
            ISSUER.to_owned(),
            5,
        )
    }

    fn claims() -> Claims {
        Claims {
            iss: ISSUER.to_owned(),
            sid: new_session_id("u-alice"),
            sub: "u-alice".to_owned(),
            name: "Alice".to_owned(),
            roles: vec!["player".to_owned()],
            vars: BTreeMap::from([("tier".to_owned(), "gold".to_owned())]),
            iat: NOW,
            exp: NOW + 3600,
        }
    }

    /// Build a ticket from raw header and payload JSON, signed with `secret`.
    fn forge(header: &str, payload: &str, secret: &[u8]) -> String {
        let mut t = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(t.as_bytes());
        t.push('.');
        t.push_str(&B64.encode(mac.finalize().into_bytes()));
        t
    }

    fn claims_json() -> String {
        serde_json::to_string(&claims()).unwrap()
    }

    #[test]
    fn round_trip() {
        let r = ring();
        let c = claims();
        let t = r.sign(&c).unwrap();
        assert_eq!(t.split('.').count(), 3);
        assert!(!t.contains('='));
        assert_eq!(r.verify(&t, NOW).unwrap(), c);
        assert_eq!(r.verify_signature_only(&t).unwrap(), c);
    }

    #[test]
    fn is_signed_ignores_expiry_but_not_the_key_or_signature() {
        let r = ring();
        let mut c = claims();
        c.exp = NOW - 10 * 3600;
        let expired = r.sign(&c).unwrap();
        assert!(r.verify(&expired, NOW).is_err());
        assert!(
            r.is_signed(&expired),
            "an expired ticket is still the gate's"
        );
        let other = KeyRing::new(vec![Key::new("k1", secret(9))], ISSUER.to_owned(), 5);
        assert!(!other.is_signed(&expired), "same kid, other secret");
        let unknown_kid = forge(r#"{"alg":"HS256","kid":"k9"}"#, &claims_json(), &secret(1));
        assert!(!r.is_signed(&unknown_kid));
        for garbage in ["", "a.b.c", "abc", "dXNlcjpwYXNz"] {
            assert!(!r.is_signed(garbage), "{garbage}");
        }
    }

    #[test]
    fn header_is_exactly_as_specified() {
        let t = ring().sign(&claims()).unwrap();
        let h = B64.decode(t.split('.').next().unwrap()).unwrap();
        assert_eq!(h, br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
    }

    #[test]
    fn optional_claims_default_when_absent() {
        let payload = format!(
            r#"{{"iss":"{ISSUER}","sid":"s","sub":"u","iat":{NOW},"exp":{}}}"#,
            NOW + 10
        );
        let t = forge(
            r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#,
            &payload,
            &secret(1),
        );
        let c = ring().verify(&t, NOW).unwrap();
        assert_eq!(c.name, "");
        assert!(c.roles.is_empty() && c.vars.is_empty());
    }

    #[test]
    fn rotation_older_key_still_verifies() {
        let old = KeyRing::new(vec![Key::new("k0", secret(0))], ISSUER.to_owned(), 5);
        let c = claims();
        let t = old.sign(&c).unwrap();
        // New ring: k1 signs, k0 still verifies.
        let r = ring();
        assert_eq!(r.verify(&t, NOW).unwrap(), c);
        assert_eq!(r.signing_kid(), Some("k1"));
        // Once k0 is dropped, the old ticket is refused.
        let dropped = KeyRing::new(vec![Key::new("k1", secret(1))], ISSUER.to_owned(), 5);
        assert_eq!(dropped.verify(&t, NOW), Err(TicketError::UnknownKey));
    }

    #[test]
    fn unknown_kid() {
        let t = forge(r#"{"alg":"HS256","kid":"k9"}"#, &claims_json(), &secret(1));
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::UnknownKey));
    }

    #[test]
    fn kid_of_other_key_with_wrong_secret_is_bad_signature() {
        // Signed with k1's secret but claims to be k0.
        let t = forge(r#"{"alg":"HS256","kid":"k0"}"#, &claims_json(), &secret(1));
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::BadSignature));
    }

    #[test]
    fn missing_kid() {
        let t = forge(r#"{"alg":"HS256","typ":"JWT"}"#, &claims_json(), &secret(1));
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::UnknownKey));
    }

    #[test]
    fn alg_none() {
        let header = B64.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let payload = B64.encode(claims_json());
        for t in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            let got = ring().verify(&t, NOW);
            assert!(
                matches!(
                    got,
                    Err(TicketError::UnsupportedAlg | TicketError::Malformed)
                ),
                "{t}: {got:?}"
            );
        }
        assert_eq!(
            ring().verify(&format!("{header}.{payload}."), NOW),
            Err(TicketError::UnsupportedAlg)
        );
        // Case variants are not HS256 either.
        let t = forge(r#"{"alg":"hs256","kid":"k1"}"#, &claims_json(), &secret(1));
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::UnsupportedAlg));
    }

    #[test]
    fn alg_hs512_and_rs256_rejected() {
        for alg in ["HS512", "HS384", "RS256", "ES256", "PS256"] {
            let t = forge(
                &format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"k1"}}"#),
                &claims_json(),
                &secret(1),
            );
            assert_eq!(
                ring().verify(&t, NOW),
                Err(TicketError::UnsupportedAlg),
                "{alg}"
            );
        }
    }

    #[test]
    fn missing_alg_is_malformed() {
        let t = forge(r#"{"kid":"k1"}"#, &claims_json(), &secret(1));
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::Malformed));
    }

    #[test]
    fn crit_header_rejected() {
        let t = forge(
            r#"{"alg":"HS256","kid":"k1","crit":["exp"]}"#,
            &claims_json(),
            &secret(1),
        );
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::Malformed));
    }

    #[test]
    fn escaped_kid_still_matches() {
        // "k\u0031" is "k1": the borrowed-header path must handle JSON escapes.
        let t = forge(
            r#"{"alg":"HS\u0032\u0035\u0036","kid":"k\u0031"}"#,
            &claims_json(),
            &secret(1),
        );
        assert!(ring().verify(&t, NOW).is_ok());
    }

    #[test]
    fn bad_base64() {
        let good = ring().sign(&claims()).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let cases = [
            format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}*.{}", parts[0], parts[1], parts[2]),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            // Standard alphabet is not base64url.
            format!("{}.{}.+{}", parts[0], parts[1], &parts[2][1..]),
            format!("{}.{}./{}", parts[0], parts[1], &parts[2][1..]),
            "a.b.c".to_owned(),
            "..".to_owned(),
            "".to_owned(),
            "not a ticket".to_owned(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{good}.{}", parts[2]),
            format!("{}.{}.{}é", parts[0], parts[1], &parts[2][..42]),
        ];
        for t in &cases {
            let got = ring().verify(t, NOW);
            assert!(
                matches!(got, Err(TicketError::Malformed | TicketError::BadSignature)),
                "{t}: {got:?}"
            );
        }
        assert_eq!(ring().verify(&cases[0], NOW), Err(TicketError::Malformed));
        assert_eq!(ring().verify("a.b.c", NOW), Err(TicketError::Malformed));
    }

    #[test]
    fn bad_json() {
        let h = r#"{"alg":"HS256","kid":"k1"}"#;
        for payload in ["{", "not json", "[1,2,3]", r#"{"iss":1}"#, "", "null"] {
            let t = forge(
                h,
                if payload.is_empty() { " " } else { payload },
                &secret(1),
            );
            assert_eq!(
                ring().verify(&t, NOW),
                Err(TicketError::Malformed),
                "{payload}"
            );
        }
        let t = forge("{nope", &claims_json(), &secret(1));
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::Malformed));
        // A header given as an array is not a JSON object.
        let t = forge(r#"["HS256",null,"k1"]"#, &claims_json(), &secret(1));
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::Malformed));
        // Trailing garbage after the object.
        let t = forge(h, &format!("{} x", claims_json()), &secret(1));
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::Malformed));
    }

    #[test]
    fn missing_claims() {
        let full: serde_json::Value = serde_json::to_value(claims()).unwrap();
        for claim in ["iss", "sid", "sub", "iat", "exp"] {
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(claim);
            let t = forge(r#"{"alg":"HS256","kid":"k1"}"#, &v.to_string(), &secret(1));
            assert_eq!(
                ring().verify(&t, NOW),
                Err(TicketError::Malformed),
                "{claim}"
            );
        }
        // Wrong types are malformed too.
        let mut v = full.clone();
        v["vars"] = serde_json::json!({"tier": 1});
        let t = forge(r#"{"alg":"HS256","kid":"k1"}"#, &v.to_string(), &secret(1));
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::Malformed));
    }

    #[test]
    fn signature_checked_before_claims_are_parsed() {
        // Garbage claims with a bad signature: the signature error wins.
        let t = forge(r#"{"alg":"HS256","kid":"k1"}"#, "garbage", &secret(7));
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::BadSignature));
    }

    #[test]
    fn expired() {
        let r = ring();
        let mut c = claims();
        c.iat = NOW - 100;
        c.exp = NOW - 5; // exp + leeway == now
        let t = r.sign(&c).unwrap();
        assert_eq!(r.verify(&t, NOW), Err(TicketError::Expired));
        assert_eq!(r.verify(&t, NOW + 1000), Err(TicketError::Expired));
        // No time checks for inspect.
        assert_eq!(r.verify_signature_only(&t).unwrap(), c);
    }

    #[test]
    fn within_leeway_accepted() {
        let r = ring();
        let mut c = claims();
        c.exp = NOW - 4; // exp + leeway == now + 1
        c.iat = NOW - 100;
        assert!(r.verify(&r.sign(&c).unwrap(), NOW).is_ok());
        let mut c = claims();
        c.iat = NOW + 5; // iat == now + leeway
        assert!(r.verify(&r.sign(&c).unwrap(), NOW).is_ok());
    }

    #[test]
    fn iat_in_the_future() {
        let r = ring();
        let mut c = claims();
        c.iat = NOW + 6;
        c.exp = NOW + 3600;
        let t = r.sign(&c).unwrap();
        assert_eq!(r.verify(&t, NOW), Err(TicketError::NotYetValid));
        assert!(r.verify(&t, NOW + 1).is_ok());
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let r = ring();
        let mut c = claims();
        c.exp = u64::MAX;
        c.iat = 0;
        assert!(r.verify(&r.sign(&c).unwrap(), u64::MAX - 1).is_ok());
        c.iat = u64::MAX;
        assert_eq!(
            r.verify(&r.sign(&c).unwrap(), 0),
            Err(TicketError::NotYetValid)
        );
    }

    #[test]
    fn too_long() {
        let t = "a".repeat(MAX_TICKET_LEN + 1);
        assert_eq!(ring().verify(&t, NOW), Err(TicketError::TooLong));
        assert_eq!(decode_unverified(&t), Err(TicketError::TooLong));
        // A well-formed, correctly signed ticket over the limit is refused too.
        let mut c = claims();
        c.name = "x".repeat(MAX_TICKET_LEN);
        assert_eq!(ring().sign(&c), Err(TicketError::TooLong));
        let big = forge(
            r#"{"alg":"HS256","kid":"k1"}"#,
            &serde_json::to_string(&c).unwrap(),
            &secret(1),
        );
        assert!(big.len() > MAX_TICKET_LEN);
        assert_eq!(ring().verify(&big, NOW), Err(TicketError::TooLong));
    }

    #[test]
    fn largest_ticket_that_fits_verifies() {
        // Grow the name one byte at a time until signing refuses; the last success is
        // within one base64 quantum of the limit and must verify.
        let r = ring();
        let mut c = claims();
        c.name.clear();
        let base = r.sign(&c).unwrap().len();
        c.name = "x".repeat((MAX_TICKET_LEN - base) * 3 / 4 - 8);
        let mut last = r.sign(&c).unwrap();
        loop {
            c.name.push('x');
            match r.sign(&c) {
                Ok(t) => last = t,
                Err(e) => {
                    assert_eq!(e, TicketError::TooLong);
                    break;
                }
            }
        }
        assert!(last.len() <= MAX_TICKET_LEN && last.len() > MAX_TICKET_LEN - 4);
        c.name.pop();
        assert_eq!(r.verify(&last, NOW).unwrap(), c);
    }

    #[test]
    fn wrong_issuer() {
        let r = ring();
        let mut c = claims();
        c.iss = "someone-else".to_owned();
        let t = r.sign(&c).unwrap();
        assert_eq!(r.verify(&t, NOW), Err(TicketError::WrongIssuer));
        assert!(r.verify_signature_only(&t).is_ok());
    }

    #[test]
    fn tampered_payload() {
        let r = ring();
        let t = r.sign(&claims()).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims();
        c.roles.push("admin".to_owned());
        let evil = B64.encode(serde_json::to_vec(&c).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], evil, parts[2]);
        assert_eq!(r.verify(&tampered, NOW), Err(TicketError::BadSignature));
        // Signed by a key with the right id but another secret.
        let impostor = KeyRing::new(vec![Key::new("k1", secret(9))], ISSUER.to_owned(), 5);
        let t = impostor.sign(&claims()).unwrap();
        assert_eq!(r.verify(&t, NOW), Err(TicketError::BadSignature));
    }

    #[test]
    fn truncated_or_padded_signature() {
        let r = ring();
        let t = r.sign(&claims()).unwrap();
        assert_eq!(
            r.verify(&t[..t.len() - 1], NOW),
            Err(TicketError::BadSignature)
        );
        assert_eq!(
            r.verify(&format!("{t}A"), NOW),
            Err(TicketError::BadSignature)
        );
        let (head, _) = t.rsplit_once('.').unwrap();
        assert_eq!(
            r.verify(&format!("{head}."), NOW),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn empty_ring() {
        let r = KeyRing::new(Vec::new(), ISSUER.to_owned(), 5);
        assert_eq!(r.sign(&claims()), Err(TicketError::NoSigningKey));
        let t = ring().sign(&claims()).unwrap();
        assert_eq!(r.verify(&t, NOW), Err(TicketError::UnknownKey));
        assert_eq!(r.signing_kid(), None);
    }

    #[test]
    fn decode_unverified_reads_without_checking() {
        let t = forge(
            r#"{"alg":"none","kid":"zz"}"#,
            r#"{"sid":"x","extra":1}"#,
            b"whatever",
        );
        let (h, c) = decode_unverified(&t).unwrap();
        assert_eq!(h.alg, "none");
        assert_eq!(h.kid.as_deref(), Some("zz"));
        assert_eq!(h.typ, None);
        assert_eq!(c["extra"], 1);
        let t = ring().sign(&claims()).unwrap();
        let (h, c) = decode_unverified(&t).unwrap();
        assert_eq!(
            h,
            Header {
                alg: "HS256".into(),
                typ: Some("JWT".into()),
                kid: Some("k1".into())
            }
        );
        assert_eq!(c, serde_json::to_value(claims_with_sid(&c)).unwrap());
        assert_eq!(decode_unverified("x.y"), Err(TicketError::Malformed));
    }

    fn claims_with_sid(v: &serde_json::Value) -> Claims {
        let mut c = claims();
        c.sid = v["sid"].as_str().unwrap().to_owned();
        c
    }

    #[test]
    fn session_ids_and_secrets() {
        let a = new_session_id("u-alice");
        let b = new_session_id("u-alice");
        assert_ne!(a, b);
        assert_eq!(a.len(), crate::session::SID_LEN);
        // 144 random bits before the owner's tag.
        assert!(B64.decode(&a[..24]).unwrap().len() * 8 >= 128);
        assert_eq!(
            crate::session::sid_tag(&a),
            crate::session::user_tag("u-alice")
        );
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        let s = new_secret();
        assert_eq!(decode_secret(&s).unwrap().len(), 32);
        assert_ne!(s, new_secret());
    }

    #[test]
    fn decode_secret_accepts_padding_and_standard_alphabet() {
        let raw: Vec<u8> = (0u8..=255).step_by(7).collect();
        let url_nopad = B64.encode(&raw);
        let url_pad = base64::engine::general_purpose::URL_SAFE.encode(&raw);
        let std_pad = base64::engine::general_purpose::STANDARD.encode(&raw);
        let std_nopad = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&raw);
        for s in [&url_nopad, &url_pad, &std_pad, &std_nopad] {
            assert_eq!(decode_secret(s).unwrap(), raw, "{s}");
        }
        assert_eq!(decode_secret(&format!("{url_nopad}\n")).unwrap(), raw);
        assert_eq!(decode_secret(""), Err(TicketError::InvalidSecret));
        assert_eq!(
            decode_secret("not base64!"),
            Err(TicketError::InvalidSecret)
        );
    }

    #[test]
    fn debug_does_not_leak_secrets() {
        let k = Key::new("k1", b"supersecretsupersecretsupersecret".to_vec());
        assert!(!format!("{k:?}").contains("supersecret"));
        assert_eq!(k.secret_len(), 33);
        assert!(format!("{:?}", ring()).contains("k1"));
    }

    fn arb_claims() -> impl Strategy<Value = Claims> {
        (
            ".{0,40}",
            "[A-Za-z0-9_-]{1,43}",
            ".{0,40}",
            ".{0,40}",
            prop::collection::vec(".{0,16}", 0..6),
            prop::collection::btree_map("[A-Za-z0-9_-]{1,64}", ".{0,64}", 0..8),
            0u64..=u64::MAX / 2,
            0u64..=u64::MAX / 2,
        )
            .prop_map(|(iss, sid, sub, name, roles, vars, iat, ttl)| Claims {
                iss,
                sid,
                sub,
                name,
                roles,
                vars,
                iat,
                exp: iat + ttl,
            })
    }

    proptest! {
        #[test]
        fn prop_mint_verify_round_trip(mut c in arb_claims()) {
            c.iss = ISSUER.to_owned();
            let r = ring();
            let t = r.sign(&c).unwrap();
            // Any `now` in [iat, exp) is accepted.
            let now = c.iat + (c.exp - c.iat) / 2;
            prop_assert_eq!(r.verify(&t, now).unwrap(), c.clone());
            prop_assert_eq!(r.verify_signature_only(&t).unwrap(), c);
        }

        #[test]
        fn prop_any_single_byte_flip_fails(
            c in arb_claims(),
            pos in any::<prop::sample::Index>(),
            flip in 1u8..128,
        ) {
            let r = KeyRing::new(vec![Key::new("k1", secret(1))], c.iss.clone(), 5);
            let t = r.sign(&c).unwrap();
            let mut bytes = t.into_bytes();
            let i = pos.index(bytes.len());
            bytes[i] ^= flip; // ASCII stays ASCII, so still valid UTF-8
            let t = String::from_utf8(bytes).unwrap();
            prop_assert!(r.verify_signature_only(&t).is_err(), "flipped byte {} still verified", i);
        }

        #[test]
        fn prop_arbitrary_input_never_panics(s in ".{0,200}", now in any::<u64>()) {
            let _ = ring().verify(&s, now);
            let _ = decode_unverified(&s);
            let _ = decode_secret(&s);
        }
    }
}
