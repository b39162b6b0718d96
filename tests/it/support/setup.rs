//! The test config as data ([`Setup`], JSON merge patches), its users file
//! and the standard routes.

use super::*;

/// A users file with `alice`/`wonderland` (player, tier=gold) and
/// `bob`/`builder` (no roles), written as `users.yaml` in `dir`. The hashes
/// are real argon2id PHC strings with tiny parameters (m=8, t=1, p=1), so
/// a test logs in without waiting on the hash; the gate verifies whatever
/// parameters a PHC string names.
pub fn users_file(dir: &std::path::Path) -> PathBuf {
    use std::sync::OnceLock;
    static HASHES: OnceLock<(String, String)> = OnceLock::new();
    let (a, b) = HASHES.get_or_init(|| (cheap_hash("wonderland"), cheap_hash("builder")));
    let p = dir.join("users.yaml");
    std::fs::write(
        &p,
        format!(
            "users:\n  - username: alice\n    password_hash: \"{a}\"\n    id: u-alice\n    name: Alice\n    roles: [player]\n    vars: {{tier: gold}}\n  - username: bob\n    password_hash: \"{b}\"\n    id: u-bob\n    name: Bob\n"
        ),
    )
    .expect("write users");
    p
}

/// `(id, status)` of each session of a `/_session/list` or
/// `/admin/sessions` answer, in its order.
pub fn ids_and_statuses(sessions: &[serde_json::Value]) -> Vec<(String, String)> {
    sessions
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("a session has an id").to_owned(),
                s["status"]
                    .as_str()
                    .expect("a session has a status")
                    .to_owned(),
            )
        })
        .collect()
}

/// An argon2id PHC string for `password` with tiny parameters (m=8, t=1,
/// p=1): tests log in often and must not wait on the hash.
pub fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    use argon2::{Algorithm, Argon2, Params, Version};
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(8, 1, 1, None).expect("argon2 params"),
    )
    .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
    .expect("hash")
    .to_string()
}

/// Stands for the standard users file in a [`Setup`]: [`Setup::text`] puts
/// the path of the one it was given there.
pub const USERS: &str = "{users}";

/// The standard test config as data. A test changes it with merge patches
/// (RFC 7386: objects merge key by key, `null` removes a key, anything else,
/// arrays included, replaces), and [`Setup::text`] writes it as JSON, which
/// the gate reads as the YAML it is.
#[derive(Clone, Debug)]
pub struct Setup {
    config: serde_json::Value,
    /// The users file's text when a test names its own users.
    users: Option<String>,
}

impl Setup {
    pub fn redis(r: &Redis) -> Setup {
        Self::on_store(serde_json::json!({"kind": "redis", "url": r.url(), "timeout": "200ms"}))
    }

    pub fn cluster(c: &RedisCluster) -> Setup {
        Self::on_store(
            serde_json::json!({"kind": "redis", "cluster": c.urls(), "timeout": "500ms"}),
        )
    }

    pub fn memory() -> Setup {
        Self::on_store(serde_json::json!({"kind": "memory"}))
    }

    /// The standard config on `store`: one key, the users file with cheap
    /// rate limits, a short grace period and a placeholder route.
    pub fn on_store(store: serde_json::Value) -> Setup {
        Setup {
            config: serde_json::json!({
                "admin": {"token": ADMIN_TOKEN},
                "store": store,
                "tickets": {
                    "keys": [{"id": "k1", "secret": SECRET}],
                    "cookie": {"name": "sg_ticket", "secure": false},
                },
                "login": {
                    "users_file": USERS,
                    "rate_limit": {"per_ip": "1000/min", "per_user": "1000/min"},
                },
                "server": {"grace_period": "5s", "shutdown_timeout": "2s"},
                "routes": [{
                    "name": "none", "kind": "controller", "path": "/none",
                    "upstreams": ["127.0.0.1:9"], "auth": "public",
                }],
            }),
            users: None,
        }
    }

    /// Replaces the standard users with `(username, password, id, vars as a
    /// YAML flow map)`, hashed cheaply.
    pub fn users(mut self, users: &[(&str, &str, &str, &str)]) -> Setup {
        let mut yaml = String::from("users:\n");
        for (username, password, id, vars) in users {
            yaml.push_str(&format!(
                "  - username: \"{username}\"\n    password_hash: \"{}\"\n    id: \"{id}\"\n    vars: {vars}\n",
                cheap_hash(password)
            ));
        }
        self.users = Some(yaml);
        self
    }

    /// Writes the users file [`USERS`] stands for into `dir`: the test's own
    /// users, else the standard ones.
    pub fn write_users(&self, dir: &std::path::Path) -> PathBuf {
        match &self.users {
            Some(yaml) => {
                let p = dir.join("users.yaml");
                std::fs::write(&p, yaml).expect("write users");
                p
            }
            None => users_file(dir),
        }
    }

    /// Applies a merge patch to the whole config.
    pub fn patch(mut self, patch: serde_json::Value) -> Setup {
        merge_patch(&mut self.config, patch);
        self
    }

    /// Replaces the `store` block.
    pub fn store(mut self, store: serde_json::Value) -> Setup {
        self.config["store"] = store;
        self
    }

    pub fn sessions(self, sessions: serde_json::Value) -> Setup {
        self.patch(serde_json::json!({ "sessions": sessions }))
    }

    /// Replaces the routes (an array of route objects).
    pub fn routes(mut self, routes: serde_json::Value) -> Setup {
        self.config["routes"] = routes;
        self
    }

    pub fn login(self, login: serde_json::Value) -> Setup {
        self.patch(serde_json::json!({ "login": login }))
    }

    pub fn server(self, server: serde_json::Value) -> Setup {
        self.patch(serde_json::json!({ "server": server }))
    }

    /// The config file's text, listening on `listen` and `admin` (0: the gate
    /// picks) unless the config names its own, with `users` for [`USERS`].
    pub fn text(&self, listen: u16, admin: u16, users: &std::path::Path) -> String {
        let mut c = self.config.clone();
        if c.get("listen").is_none() {
            c["listen"] = serde_json::json!([format!("127.0.0.1:{listen}")]);
        }
        if let Some(a) = c.get_mut("admin").and_then(|a| a.as_object_mut()) {
            a.entry("listen")
                .or_insert_with(|| format!("127.0.0.1:{admin}").into());
        }
        if let Some(f) = c.pointer_mut("/login/users_file")
            && f == USERS
        {
            *f = users.display().to_string().into();
        }
        serde_json::to_string_pretty(&c).expect("config as JSON")
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut serde_json::Value, patch: serde_json::Value) {
    let serde_json::Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(&k);
        } else {
            merge_patch(t.entry(k).or_insert(serde_json::Value::Null), v);
        }
    }
}

/// Standard routes for the proxy tests.
pub fn routes(http: SocketAddr, ws: SocketAddr) -> serde_json::Value {
    let route = |name: &str, path: &str, auth: &str| {
        serde_json::json!({
            "name": name, "kind": "controller", "path": path,
            "upstreams": [http.to_string()], "auth": auth,
        })
    };
    let mut shop = route("shop", "/controller/shop", "required");
    shop["strip_prefix"] = true.into();
    let mut admin = route("admin-area", "/admin", "required");
    admin["roles"] = serde_json::json!(["admin"]);
    serde_json::json!([
        {
            "name": "chat", "kind": "gateway", "path": "/gateway/chat",
            "upstreams": [ws.to_string()], "auth": "required",
            "roles": ["player"], "origins": ["https://app.example.com"],
        },
        shop,
        admin,
        route("public", "/public", "public"),
        route("maybe", "/maybe", "optional"),
    ])
}
