//! Checks of the login section and of the users file (argon2id hashes, ids, names, vars that
//! become header values upstream).

use super::*;

impl Ctx<'_> {
    pub(super) fn login(&mut self, raw: RawLogin) -> LoginConfig {
        if raw.users_file.is_some() == raw.delegate.is_some() {
            self.err("login", "needs exactly one of `users_file` or `delegate`");
        }
        self.nonempty_opt("login.users_file", raw.users_file.as_deref());
        let delegate = raw.delegate.map(|d| {
            // The delegate is called over plain HTTP (it is expected beside the
            // gate); https:// would fail every login, so it is refused here.
            let url_ok = d
                .url
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !url_ok {
                self.err(
                    "login.delegate.url",
                    format!(
                        "`{}` is not an absolute http:// URL (https delegates are not supported)",
                        d.url
                    ),
                );
            }
            DelegateConfig {
                url: d.url,
                timeout: self.positive_duration(
                    "login.delegate.timeout",
                    d.timeout.as_deref(),
                    DEFAULT_DELEGATE_TIMEOUT,
                ),
            }
        });
        let defaults = RateLimitConfig::default();
        let rate_limit = match raw.rate_limit {
            None => defaults,
            Some(r) => RateLimitConfig {
                per_ip: self.rate(
                    "login.rate_limit.per_ip",
                    r.per_ip.as_deref(),
                    defaults.per_ip,
                ),
                per_user: self.rate(
                    "login.rate_limit.per_user",
                    r.per_user.as_deref(),
                    defaults.per_user,
                ),
            },
        };
        let origins = raw
            .origins
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(j, o)| self.origin(&format!("login.origins[{j}]"), o))
            .collect();
        let hashing = self.hashing(raw.hashing);
        LoginConfig {
            users_file: raw.users_file.map(PathBuf::from),
            delegate,
            origins,
            rate_limit,
            hashing,
        }
    }

    pub(super) fn hashing(&mut self, raw: Option<RawHashing>) -> HashingConfig {
        let defaults = HashingConfig::default();
        let Some(raw) = raw else { return defaults };
        let queue = match raw.queue {
            None => defaults.queue,
            Some(n) => usize::try_from(n).unwrap_or_else(|_| {
                self.err(
                    "login.hashing.queue",
                    format!("must be a whole number of at least 0, not {n}"),
                );
                defaults.queue
            }),
        };
        HashingConfig {
            workers: self.count("login.hashing.workers", raw.workers, defaults.workers),
            queue,
        }
    }

    pub(in crate::config) fn users(&mut self, raw: RawUsersFile) -> Vec<UserEntry> {
        let mut first_by_name: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(raw.users.len());
        for (i, u) in raw.users.into_iter().enumerate() {
            let p = |field: &str| format!("users[{i}].{field}");
            self.nonempty(&p("username"), &u.username);
            if let Some(&first) = first_by_name.get(&u.username) {
                let there = self.where_is(&format!("users[{first}].username"));
                self.err(
                    &p("username"),
                    format!(
                        "duplicate username `{}` (first used at {there})",
                        u.username
                    ),
                );
            } else {
                first_by_name.insert(u.username.clone(), i);
            }
            if !is_argon2id_phc(&u.password_hash) {
                self.err(
                    &p("password_hash"),
                    "not an argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$SALT$HASH`; make one with `sessiongate hash-password`)",
                );
            }
            if let Some(id) = &u.id {
                self.header_text(&p("id"), id, false);
            }
            if let Some(name) = &u.name {
                self.header_text(&p("name"), name, true);
            }
            let roles = u.roles.unwrap_or_default();
            for (j, role) in roles.iter().enumerate() {
                self.role(&format!("users[{i}].roles[{j}]"), role);
            }
            let vars = u.vars.unwrap_or_default();
            self.vars(&p("vars"), &vars);
            out.push(UserEntry {
                id: u.id.unwrap_or_else(|| u.username.clone()),
                name: u.name.unwrap_or_default(),
                username: u.username,
                password_hash: u.password_hash,
                roles,
                vars,
            });
        }
        out
    }

    /// Ids, names and vars become header values upstream: no control characters.
    pub(super) fn header_text(&mut self, path: &str, s: &str, empty_ok: bool) {
        if !empty_ok && s.is_empty() {
            self.err(path, "must not be empty");
        } else if s.chars().any(char::is_control) {
            self.err(path, "must not contain control characters");
        }
    }

    pub(super) fn vars(&mut self, path: &str, vars: &BTreeMap<String, String>) {
        if vars.len() > MAX_VARS {
            self.err(
                path,
                format!("{} vars; at most {MAX_VARS} are allowed", vars.len()),
            );
        }
        for (key, value) in vars {
            let at = format!("{path}.{key}");
            let key_ok = (1..=MAX_VAR_KEY).contains(&key.len())
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !key_ok {
                self.err_key(
                    &at,
                    format!("var name `{key}` must match [A-Za-z0-9_-]{{1,{MAX_VAR_KEY}}}"),
                );
            }
            if value.len() > MAX_VAR_VALUE {
                self.err(
                    &at,
                    format!("value is {} bytes; at most {MAX_VAR_VALUE}", value.len()),
                );
            }
            self.header_text(&at, value, true);
        }
        // Keys become header names (case-insensitive): two spellings of one
        // key would be two values for one header.
        let mut seen: HashMap<String, &str> = HashMap::new();
        for key in vars.keys() {
            if let Some(first) = seen.insert(key.to_ascii_lowercase(), key) {
                self.err_key(
                    &format!("{path}.{key}"),
                    format!("var name `{key}` differs from `{first}` only in case"),
                );
            }
        }
    }
}

pub(super) fn is_argon2id_phc(s: &str) -> bool {
    let parts: Vec<&str> = s.split('$').collect();
    matches!(
        parts.as_slice(),
        ["", "argon2id", version, params, salt, hash]
            if version.starts_with("v=")
                && params.contains("m=") && params.contains("t=") && params.contains("p=")
                && !salt.is_empty() && !hash.is_empty()
    )
}
