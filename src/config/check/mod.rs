//! Raw -> typed: defaults, parsing and every cross-field rule, each error located at the
//! offending node. This file holds [`Ctx`] (where errors go and how values are read) and the
//! top-level `config`; each section's checks live in the child module named after it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::raw::*;
use super::source::SourceMap;
use super::yaml::Marks;
use super::*;
use crate::path::normalize_prefix;

mod edge;
mod login;
mod routes;
mod sessions;
mod store;

pub use routes::normalize_origin;

/// Turns raw shapes into typed values, collecting every error. Each helper returns a usable
/// value (the default) after recording an error, so checking goes on past the first problem.
pub(super) struct Ctx<'a> {
    file: &'a Path,
    map: &'a SourceMap,
    marks: Marks,
    errors: Vec<ConfigError>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(file: &'a Path, map: &'a SourceMap, marks: Marks) -> Self {
        Ctx {
            file,
            map,
            marks,
            errors: Vec::new(),
        }
    }

    pub(super) fn finish<T>(mut self, value: T) -> Result<T, Vec<ConfigError>> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        self.errors.sort_by_key(|e| (e.line, e.col));
        self.errors.dedup();
        Err(self.errors)
    }

    fn locate(&self, path: &str) -> (usize, usize) {
        self.map.to_orig(self.marks.find(path))
    }

    /// `FILE:LINE:COL` of `path`, for messages that name a second place.
    fn where_is(&self, path: &str) -> String {
        let (line, col) = self.locate(path);
        format!("{}:{line}:{col}", self.file.display())
    }

    fn err(&mut self, path: &str, message: impl fmt::Display) {
        let pos = self.locate(path);
        self.err_at(pos, path, message);
    }

    /// For errors about a mapping key itself rather than its value.
    fn err_key(&mut self, path: &str, message: impl fmt::Display) {
        let pos = self.map.to_orig(self.marks.find_key(path));
        self.err_at(pos, path, message);
    }

    fn err_at(&mut self, (line, col): (usize, usize), path: &str, message: impl fmt::Display) {
        let message = if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            col,
            message,
        });
    }

    fn duration(&mut self, path: &str, raw: Option<&str>, default: Duration) -> Duration {
        let Some(s) = raw else { return default };
        match parse_duration(s) {
            Some(d) => d,
            None => {
                self.err(
                    path,
                    format!("invalid duration `{s}`: expected a number and a unit (ms, s, m, h, d), like `30s`"),
                );
                default
            }
        }
    }

    /// A cache budget: at least [`MIN_CACHE_BYTES`], so a typo cannot turn
    /// a cache into one that holds nothing.
    fn bytes(&mut self, path: &str, raw: Option<RawBytes>, default: u64) -> u64 {
        let (n, text) = match raw {
            None => return default,
            Some(RawBytes::Number(n)) => (Some(n), n.to_string()),
            Some(RawBytes::Text(t)) => (parse_bytes(&t), t),
        };
        match n {
            Some(n) if n >= MIN_CACHE_BYTES => n,
            Some(_) => {
                self.err(path, format!("`{text}` is too small: at least 64KiB"));
                default
            }
            None => {
                self.err(
                    path,
                    format!("invalid size `{text}`: expected bytes or a number and a unit (KiB, MiB, GiB), like `64MiB`"),
                );
                default
            }
        }
    }

    fn positive_duration(&mut self, path: &str, raw: Option<&str>, default: Duration) -> Duration {
        let d = self.duration(path, raw, default);
        if d.is_zero() {
            self.err(path, "must be greater than zero");
            return default;
        }
        d
    }

    fn choice<T: Copy>(
        &mut self,
        path: &str,
        raw: Option<&str>,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        raw.and_then(|s| self.pick(path, s, options))
            .unwrap_or(default)
    }

    fn pick<T: Copy>(&mut self, path: &str, s: &str, options: &[(&str, T)]) -> Option<T> {
        if let Some(&(_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Some(v);
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("`{n}`")).collect();
        self.err(
            path,
            format!("unknown value `{s}`: expected one of {}", names.join(", ")),
        );
        None
    }

    fn rate(&mut self, path: &str, raw: Option<&str>, default: Rate) -> Rate {
        let Some(s) = raw else { return default };
        parse_rate(s).unwrap_or_else(|| {
            self.err(
                path,
                format!("invalid rate `{s}`: expected COUNT/UNIT with COUNT >= 1, like `10/min`, `5/s`, `100/hour` or `3/10s`"),
            );
            default
        })
    }

    /// A count of at least 1 that fits `T`.
    fn count<T: TryFrom<i64> + Copy>(&mut self, path: &str, raw: Option<i64>, default: T) -> T {
        let Some(n) = raw else { return default };
        match T::try_from(n) {
            Ok(v) if n >= 1 => v,
            _ => {
                self.err(
                    path,
                    format!("must be a whole number of at least 1, not {n}"),
                );
                default
            }
        }
    }

    fn nonempty(&mut self, path: &str, s: &str) {
        if s.trim().is_empty() {
            self.err(path, "must not be empty");
        }
    }

    fn nonempty_opt(&mut self, path: &str, s: Option<&str>) {
        if let Some(s) = s {
            self.nonempty(path, s);
        }
    }

    /// Role names travel comma-separated in `X-Session-Roles`.
    fn role(&mut self, path: &str, role: &str) {
        if role.is_empty() || !role.chars().all(|c| c.is_ascii_graphic() && c != ',') {
            self.err(
                path,
                format!("invalid role `{role}`: use visible ASCII characters other than `,`"),
            );
        }
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        let listen = match &raw.listen {
            Some(l) => self.listen("listen", l),
            None => Vec::new(),
        };
        let tls = raw.tls.map(|t| self.tls(t, &listen));
        let tls_listen = tls.as_ref().map_or(0, |t| t.listen.len());
        if listen.is_empty() && tls_listen == 0 {
            let what = if raw.listen.is_some() {
                "`listen` is empty and there is no `tls.listen`"
            } else {
                "`listen` (or `tls.listen`) is required"
            };
            self.err(
                "listen",
                format!("at least one address is required: {what}"),
            );
        }
        let mut all = listen.clone();
        all.extend(tls.iter().flat_map(|t| t.listen.iter().copied()));
        let admin = raw.admin.map(|a| self.admin(a, &all));
        Config {
            listen,
            admin,
            store: self.store(raw.store),
            tickets: self.tickets(raw.tickets),
            sessions: self.sessions(raw.sessions),
            identity: self.identity(raw.identity),
            login: raw.login.map(|l| self.login(l)),
            routes: self.routes(raw.routes),
            server: self.server(raw.server),
            tls,
            clients: self.clients(raw.clients),
        }
    }
}

/// RFC 9110 `tchar`: what a header name or cookie name may contain.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
