//! Tests for the config loader, named after the rule they pin. Positions are checked exactly:
//! an operator jumps to `FILE:LINE:COL`, so an off-by-one is a bug.

#![allow(clippy::unwrap_used)]

use super::*;

const SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80";

fn env(name: &str) -> Option<String> {
    match name {
        "SESSIONGATE_KEY" => Some(SECRET.to_owned()),
        "SESSIONGATE_ADMIN_TOKEN" => Some("s3cret-admin".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn ok(text: &str) -> Config {
    match parse(text, Path::new("gate.yaml"), &env) {
        Ok(c) => c,
        Err(errors) => panic!("unexpected errors:\n{}", lines(&errors)),
    }
}

fn errs(text: &str) -> Vec<ConfigError> {
    match parse(text, Path::new("gate.yaml"), &env) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(errors) => errors,
    }
}

fn lines(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("{e}\n")).collect()
}

/// The one error's `LINE:COL: message`.
fn only(errors: &[ConfigError]) -> String {
    assert_eq!(errors.len(), 1, "expected one error:\n{}", lines(errors));
    format!(
        "{}:{}: {}",
        errors[0].line, errors[0].col, errors[0].message
    )
}

const MINIMAL: &str = "\
listen: 127.0.0.1:6090
store: {kind: memory}
tickets:
  keys:
    - id: k1
      secret: ${SESSIONGATE_KEY}
routes:
  - name: api
    kind: controller
    path: /api
    upstreams: [\"127.0.0.1:7003\"]
";

/// MINIMAL with `extra` lines spliced in before `routes:`.
fn minimal_with(extra: &str) -> String {
    MINIMAL.replace("routes:\n", &format!("{extra}routes:\n"))
}

const SPEC_EXAMPLE: &str = r#"listen: ["0.0.0.0:6090"]
admin:
  listen: "127.0.0.1:6091"        # /metrics, /healthz, /readyz, /admin/...
  token: ${SESSIONGATE_ADMIN_TOKEN}
store:
  kind: redis                      # redis | memory (memory: one process, lost on exit)
  url: redis://127.0.0.1:6379/0    # or  cluster: [redis://a:7000, redis://b:7001]
                                   # or  sentinel: {master: mymaster, nodes: [redis://s1:26379]}
  key_prefix: "sg:"
  timeout: 50ms
  on_unavailable: deny             # deny -> 503 | grace -> admit sessions seen active in the last `grace`
  grace: 30s
tickets:
  keys:                            # the first signs; all verify (rotation)
    - id: k1
      secret: ${SESSIONGATE_KEY}   # base64url, at least 32 bytes decoded
  issuer: sessiongate
  leeway: 5s
  from: [header, cookie, query]    # Authorization: Bearer, cookie, ?ticket= (WebSocket handshakes)
  cookie: {name: sg_ticket, secure: true, same_site: lax, domain: null}
sessions:
  ttl: 24h                         # absolute lifetime -> status expired
  idle_timeout: 30m                # no activity -> status abandoned
  touch_interval: 30s              # lastActiveAt is written at most this often
  max_lifetime: 30d                # refresh never extends a session past this
  max_per_user: 5                  # a new login beyond this replaces the oldest (status replaced)
identity:
  header_prefix: X-Session-        # see section 6
login:
  users_file: conf/users.yaml      # built-in credentials, argon2id hashes
  # or delegate: {url: http://127.0.0.1:7000/verify, timeout: 2s}
  rate_limit: {per_ip: 10/min, per_user: 5/min}
routes:
  - name: chat
    kind: gateway
    path: /gateway/chat            # prefix match on whole segments, after path normalization
    upstreams: ["127.0.0.1:7001", "127.0.0.1:7002"]
    auth: required                 # required | optional | public
    roles: [player]                # any of
    origins: ["https://app.example.com"]  # WebSocket handshakes: exact Origin allowlist (absent = any)
  - name: shop
    kind: controller
    host: api.example.com          # optional
    path: /controller/shop
    strip_prefix: true
    upstreams: ["127.0.0.1:7003"]
    auth: required
"#;

#[test]
fn spec_example_parses() {
    let c = ok(SPEC_EXAMPLE);
    assert_eq!(c.listen, vec!["0.0.0.0:6090".parse().unwrap()]);
    let admin = c.admin.unwrap();
    assert_eq!(admin.listen, "127.0.0.1:6091".parse().unwrap());
    assert_eq!(admin.token.as_deref(), Some("s3cret-admin"));
    assert_eq!(c.store.kind, StoreKind::Redis);
    assert_eq!(c.store.url.as_deref(), Some("redis://127.0.0.1:6379/0"));
    assert_eq!(c.store.timeout, Duration::from_millis(50));
    assert_eq!(c.tickets.keys.len(), 1);
    assert_eq!(c.tickets.keys[0].id, "k1");
    assert_eq!(c.tickets.keys[0].secret.len(), 32);
    assert_eq!(c.tickets.from, DEFAULT_FROM.to_vec());
    assert!(c.tickets.cookie.domain.is_none());
    assert_eq!(c.sessions.max_lifetime, Duration::from_secs(30 * 86_400));
    let login = c.login.unwrap();
    assert_eq!(login.users_file, Some(PathBuf::from("conf/users.yaml")));
    assert_eq!(
        login.rate_limit.per_user,
        Rate {
            count: 5,
            per: MINUTE
        }
    );
    assert_eq!(c.routes.len(), 2);
    let chat = &c.routes[0];
    assert_eq!(chat.kind, RouteKind::Gateway);
    assert_eq!(chat.upstreams.len(), 2);
    assert_eq!(chat.roles, vec!["player"]);
    assert_eq!(
        chat.origins.as_deref(),
        Some(&["https://app.example.com".to_owned()][..])
    );
    let shop = &c.routes[1];
    assert_eq!(shop.host.as_deref(), Some("api.example.com"));
    assert!(shop.strip_prefix);
    assert_eq!(shop.timeout, DEFAULT_ROUTE_TIMEOUT);
}

#[test]
fn minimal_config_gets_defaults() {
    let c = ok(MINIMAL);
    assert_eq!(c.listen, vec!["127.0.0.1:6090".parse().unwrap()]);
    assert!(c.admin.is_none());
    assert!(c.login.is_none());
    assert_eq!(c.store.kind, StoreKind::Memory);
    assert_eq!(c.store.key_prefix, "sg:");
    assert_eq!(c.store.timeout, Duration::from_millis(50));
    assert_eq!(c.store.on_unavailable, OnUnavailable::Deny);
    assert_eq!(c.store.grace, Duration::from_secs(30));
    assert_eq!(c.tickets.issuer, "sessiongate");
    assert_eq!(c.tickets.leeway, Duration::from_secs(5));
    assert_eq!(
        c.tickets.from,
        vec![
            TicketSource::Header,
            TicketSource::Cookie,
            TicketSource::Query
        ]
    );
    assert_eq!(c.tickets.cookie.name, "sg_ticket");
    assert!(c.tickets.cookie.secure);
    assert_eq!(c.tickets.cookie.same_site, SameSite::Lax);
    assert_eq!(c.sessions.ttl, Duration::from_secs(86_400));
    assert_eq!(c.sessions.idle_timeout, Duration::from_secs(1_800));
    assert_eq!(c.sessions.touch_interval, Duration::from_secs(30));
    assert_eq!(c.sessions.max_per_user, 5);
    assert_eq!(c.identity.header_prefix, "X-Session-");
    let r = &c.routes[0];
    assert_eq!(r.auth, AuthPolicy::Required);
    assert!(!r.strip_prefix && r.host.is_none() && r.origins.is_none() && r.roles.is_empty());
    assert_eq!(r.timeout, Duration::from_secs(30));
    assert_eq!(r.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.server.threads, 1);
    assert_eq!(c.server.grace_period, Duration::from_secs(5));
    assert_eq!(c.server.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(c.server.header_timeout, Duration::from_secs(10));
    assert_eq!(c.server.keepalive_timeout, Duration::from_secs(60));
}

#[test]
fn listen_takes_one_address_or_a_list() {
    let c = ok(&MINIMAL.replace(
        "listen: 127.0.0.1:6090",
        "listen: [\"127.0.0.1:1\", \"[::1]:2\"]",
    ));
    assert_eq!(c.listen.len(), 2);
    let e = errs(&MINIMAL.replace(
        "listen: 127.0.0.1:6090",
        "listen: [\"127.0.0.1:1\", localhost]",
    ));
    assert!(
        only(&e).starts_with("1:25: listen[1]: `localhost` is not an IP:PORT"),
        "{}",
        lines(&e)
    );
}

#[test]
fn unknown_key_is_located() {
    let e = errs(&MINIMAL.replace(
        "    kind: controller\n",
        "    kind: controller\n    stripprefix: true\n",
    ));
    let msg = only(&e);
    assert!(
        msg.starts_with("10:5: routes[0]: unknown field `stripprefix`"),
        "{msg}"
    );
    assert!(!msg.contains("at line"), "{msg}");
}

#[test]
fn bad_duration_is_located() {
    let e = errs(&minimal_with("sessions:\n  idle_timeout: 30 minutes\n"));
    assert_eq!(
        only(&e),
        "8:17: sessions.idle_timeout: invalid duration `30 minutes`: expected a number and a unit (ms, s, m, h, d), like `30s`"
    );
}

#[test]
fn missing_env_var_is_located_at_the_dollar() {
    let e = errs(&minimal_with(
        "admin:\n  listen: 127.0.0.1:6091\n  token: x-${NOPE}\n",
    ));
    assert_eq!(
        only(&e),
        "9:12: environment variable `NOPE` is not set (give a default with `${NOPE:-...}`)"
    );
    assert_eq!(
        e[0].to_string(),
        format!("gate.yaml:9:12: {}", e[0].message)
    );
}

#[test]
fn env_default_used_when_unset_or_empty() {
    let c = ok(&minimal_with(
        "admin:\n  listen: ${NOPE:-127.0.0.1:6091}\n  token: ${EMPTY:-fallback}\n",
    ));
    let admin = c.admin.unwrap();
    assert_eq!(admin.listen, "127.0.0.1:6091".parse().unwrap());
    assert_eq!(admin.token.as_deref(), Some("fallback"));
    let c = ok(&minimal_with(
        "admin:\n  listen: 127.0.0.1:6091\n  token: ${EMPTY}\n",
    ));
    assert!(
        c.admin.unwrap().token.is_none(),
        "an empty token means no token"
    );
}

#[test]
fn commented_lines_are_not_substituted() {
    ok(&minimal_with("# token: ${NOT_SET_ANYWHERE}\n"));
}

#[test]
fn errors_after_a_substitution_keep_file_columns() {
    // The value is much longer than `${SESSIONGATE_KEY}`; the bad duration after it on the
    // same line must still point where it is in the file.
    let e = errs(&minimal_with("store_: ${SESSIONGATE_KEY} ${EMPTY:-x}\n"));
    assert!(
        only(&e).starts_with("7:1: unknown field `store_`"),
        "{}",
        lines(&e)
    );
    let text = MINIMAL.replace(
            "routes:\n  - name: api\n",
            "routes:\n  - {name: \"${SESSIONGATE_KEY}\", timeout: 5x, kind: controller, path: /b, upstreams: [\"127.0.0.1:1\"]}\n  - name: api\n",
        );
    let e = errs(&text);
    assert!(
        only(&e).starts_with("8:43: routes[0].timeout: invalid duration `5x`"),
        "{}",
        lines(&e)
    );
}

#[test]
fn duplicate_route_names_name_both_locations() {
    let text = format!(
        "{MINIMAL}  - name: api\n    kind: gateway\n    path: /ws\n    upstreams: [\"127.0.0.1:7004\"]\n"
    );
    let e = errs(&text);
    assert_eq!(
        only(&e),
        "12:11: routes[1].name: duplicate route name `api` (first used at gate.yaml:8:11)"
    );
}

#[test]
fn short_secret_is_located() {
    let e = errs(&MINIMAL.replace("${SESSIONGATE_KEY}", "c2hvcnQ"));
    assert_eq!(
        only(&e),
        "6:15: tickets.keys[0].secret: decodes to 5 bytes; at least 32 are required (make one with `sessiongate keygen`)"
    );
    let e = errs(&MINIMAL.replace("${SESSIONGATE_KEY}", "${EMPTY}"));
    assert!(
        only(&e).contains("tickets.keys[0].secret: missing or empty"),
        "{}",
        lines(&e)
    );
    let e = errs(&MINIMAL.replace("${SESSIONGATE_KEY}", "not+base64/at-all"));
    assert!(only(&e).contains("not valid base64url"), "{}", lines(&e));
    assert!(
        !e[0].message.contains("not+base64"),
        "secrets are never echoed"
    );
}

#[test]
fn secret_decodes_with_or_without_padding() {
    let padded = format!("{SECRET}=");
    assert_eq!(
        ok(&MINIMAL.replace("${SESSIONGATE_KEY}", &padded))
            .tickets
            .keys[0]
            .secret
            .len(),
        32
    );
    assert_eq!(ok(MINIMAL).tickets.keys[0].secret.len(), 32);
}

#[test]
fn roles_with_auth_public_rejected() {
    let e = errs(&MINIMAL.replace(
        "    kind: controller\n",
        "    kind: controller\n    auth: public\n    roles: [admin]\n",
    ));
    assert_eq!(
        only(&e),
        "11:5: routes[0].roles: roles apply only with `auth: required`"
    );
    ok(&MINIMAL.replace(
        "    kind: controller\n",
        "    kind: controller\n    roles: [admin]\n",
    ));
}

#[test]
fn every_semantic_error_is_reported() {
    let text = "\
listen: [\"127.0.0.1:6090\"]
store: {kind: redis}
tickets:
  keys:
    - {id: k1, secret: c2hvcnQ}
    - {id: k1, secret: ${SESSIONGATE_KEY}}
  from: []
  cookie: {name: \"sg ticket\"}
sessions: {touch_interval: 1h, idle_timeout: 30m, ttl: 60d, max_per_user: 0}
login: {rate_limit: {per_ip: lots}}
routes:
  - name: a
    kind: websocket
    path: api
    upstreams: []
    auth: optional
    roles: [x]
    origins: [\"null\", \"https://ok.example.com/path\"]
";
    let e = errs(text);
    let got: Vec<String> = e
        .iter()
        .map(|e| {
            format!(
                "{}:{} {}",
                e.line,
                e.col,
                e.message.split(':').next().unwrap_or("")
            )
        })
        .collect();
    let want = [
        "2:1 store",
        "5:24 tickets.keys[0].secret",
        "6:12 tickets.keys[1].id",
        "7:3 tickets.from",
        "8:18 tickets.cookie.name",
        "9:28 sessions.touch_interval",
        "9:56 sessions.ttl",
        "9:75 sessions.max_per_user",
        "10:1 login",
        "10:30 login.rate_limit.per_ip",
        "13:11 routes[0].kind",
        "14:11 routes[0].path",
        "15:5 routes[0].upstreams",
        "17:5 routes[0].roles",
        "18:5 routes[0].origins",
        "18:15 routes[0].origins[0]",
        "18:23 routes[0].origins[1]",
    ];
    assert_eq!(got, want, "\n{}", lines(&e));
}

#[test]
fn store_needs_exactly_one_redis_source() {
    let with = |store: &str| MINIMAL.replace("store: {kind: memory}", store);
    ok(&with("store: {url: \"redis://127.0.0.1:6379/0\"}"));
    ok(&with("store: {cluster: [\"redis://a:7000\"]}"));
    ok(&with(
        "store: {sentinel: {master: m, nodes: [\"redis://s1:26379\"]}}",
    ));
    let e = errs(&with(
        "store: {url: \"redis://a\", cluster: [\"redis://b\"]}",
    ));
    assert!(only(&e).contains("found url and cluster"), "{}", lines(&e));
    let e = errs(&with("store: {kind: memory, url: \"redis://a\"}"));
    assert!(
        only(&e).starts_with("2:28: store.url: not used with kind `memory`"),
        "{}",
        lines(&e)
    );
    let e = errs(&with("store: {url: \"http://a\"}"));
    assert!(only(&e).contains("not a Redis URL"), "{}", lines(&e));
}

#[test]
fn login_needs_exactly_one_credential_check() {
    let c = ok(&minimal_with(
        "login:\n  delegate: {url: \"http://127.0.0.1:7000/verify\"}\n",
    ));
    let delegate = c.login.unwrap().delegate.unwrap();
    assert_eq!(delegate.timeout, Duration::from_secs(2));
    let e = errs(&minimal_with(
        "login:\n  users_file: u.yaml\n  delegate: {url: \"http://x/verify\"}\n",
    ));
    assert!(
        only(&e).starts_with("7:1: login: needs exactly one"),
        "{}",
        lines(&e)
    );
    let e = errs(&minimal_with("login:\n  delegate: {url: \"/verify\"}\n"));
    assert!(
        only(&e).contains("not an absolute http:// URL"),
        "{}",
        lines(&e)
    );
}

#[test]
fn cookie_rules() {
    let tickets =
        |cookie: &str| MINIMAL.replace("routes:\n", &format!("  cookie: {cookie}\nroutes:\n"));
    let e = errs(&tickets("{domain: example.com}"));
    assert!(
        only(&e).starts_with("7:20: tickets.cookie.domain: cannot be set with `secure: true`"),
        "{}",
        lines(&e)
    );
    let c = ok(&tickets(
        "{secure: false, domain: example.com, same_site: strict}",
    ));
    assert_eq!(c.tickets.cookie.domain.as_deref(), Some("example.com"));
    assert_eq!(c.tickets.cookie.same_site, SameSite::Strict);
    assert!(
        lines(&errs(&tickets("{secure: false, same_site: none}")))
            .contains("requires `secure: true`")
    );
    assert!(lines(&errs(&tickets("{name: __Host-sg}"))).contains("leave out the `__Host-` prefix"));
}

#[test]
fn origins_are_normalized_and_checked() {
    let route = |origins: &str| {
        MINIMAL
            .replace("kind: controller", "kind: gateway")
            .replace(
                "    path: /api\n",
                &format!("    path: /api\n    origins: {origins}\n"),
            )
    };
    let c = ok(&route(
        "[\"HTTPS://App.Example.com:443\", \"http://localhost:3000\", \"http://[::1]:8080\"]",
    ));
    assert_eq!(
        c.routes[0].origins.as_deref().unwrap(),
        [
            "https://app.example.com",
            "http://localhost:3000",
            "http://[::1]:8080"
        ]
    );
    for bad in [
        "[\"null\"]",
        "[\"app.example.com\"]",
        "[\"https://a.com/\"]",
        "[\"https://a.com:99999\"]",
    ] {
        assert_eq!(errs(&route(bad)).len(), 1, "{bad}");
    }
    let e = errs(&MINIMAL.replace(
        "    path: /api\n",
        "    path: /api\n    origins: [\"https://a.com\"]\n",
    ));
    assert!(
        only(&e).contains("only to `kind: gateway`"),
        "{}",
        lines(&e)
    );
}

#[test]
fn route_paths_hosts_and_upstreams_are_checked() {
    for bad in [
        "/_session/x",
        "/_session/",
        "/a/../_session",
        "/a/../../b",
        "/a%2fb",
    ] {
        let e = errs(&MINIMAL.replace("path: /api", &format!("path: {bad}")));
        assert!(
            only(&e).starts_with("10:11: routes[0].path"),
            "{bad}: {}",
            lines(&e)
        );
    }
    ok(&MINIMAL.replace("path: /api", "path: /_sessions"));
    let e = errs(&MINIMAL.replace("path: /api", "path: /_session/x"));
    assert!(
        only(&e).contains("which the gate serves itself"),
        "{}",
        lines(&e)
    );
    let e = errs(&MINIMAL.replace(
        "    path: /api\n",
        "    path: /api\n    host: \"api.example.com:443\"\n",
    ));
    assert!(
        only(&e).starts_with("11:11: routes[0].host"),
        "{}",
        lines(&e)
    );
    let c = ok(&MINIMAL.replace(
        "    path: /api\n",
        "    path: /api\n    host: API.Example.com\n",
    ));
    assert_eq!(c.routes[0].host.as_deref(), Some("api.example.com"));
    let e = errs(&MINIMAL.replace("\"127.0.0.1:7003\"", "\"127.0.0.1:7003\", \"127.0.0.1\""));
    assert!(
        only(&e).starts_with("11:35: routes[0].upstreams[1]: cannot resolve `127.0.0.1`"),
        "{}",
        lines(&e)
    );
    let c = ok(&MINIMAL.replace("\"127.0.0.1:7003\"", "\"localhost:7003\""));
    assert_eq!(
        c.routes[0].upstreams,
        vec!["127.0.0.1:7003".parse().unwrap()]
    );
    // `/api/` and `/api` are the same prefix to the route table.
    let twin = format!(
        "{MINIMAL}  - name: other\n    kind: controller\n    path: /api/\n    upstreams: [\"127.0.0.1:1\"]\n"
    );
    assert!(only(&errs(&twin)).contains("same host and path"));
}

#[test]
fn yaml_and_type_errors_are_located() {
    let e = errs(&MINIMAL.replace(
        "listen: 127.0.0.1:6090\n",
        "listen: 127.0.0.1:6090\n  extra: 1\n",
    ));
    assert!(
        only(&e).starts_with("2:8: mapping values are not allowed"),
        "{}",
        lines(&e)
    );
    assert!(!e[0].message.contains("at line"), "{}", lines(&e));
    let e = errs(&minimal_with("sessions: {max_per_user: -1}\n"));
    assert!(
        only(&e).starts_with(
            "7:26: sessions.max_per_user: must be a whole number of at least 1, not -1"
        ),
        "{}",
        lines(&e)
    );
    let e = errs(&MINIMAL.replace("store: {kind: memory}\n", ""));
    assert!(only(&e).contains("missing field `store`"), "{}", lines(&e));
}

#[test]
fn unreadable_file_is_reported_at_one_one() {
    let e = load(Path::new("/nonexistent/gate.yaml")).unwrap_err();
    assert!(
        only(&e).starts_with("1:1: cannot read file"),
        "{}",
        lines(&e)
    );
    assert!(e[0].to_string().starts_with("/nonexistent/gate.yaml:1:1: "));
}

#[test]
fn server_block_and_header_prefix() {
    let c = ok(&minimal_with(
        "server: {threads: 4, grace_period: 0s, shutdown_timeout: 1m}\nidentity: {header_prefix: X-User-}\n",
    ));
    assert_eq!(c.server.threads, 4);
    assert_eq!(c.server.grace_period, Duration::ZERO);
    assert_eq!(c.server.shutdown_timeout, MINUTE);
    assert_eq!(c.identity.header_prefix, "X-User-");
    let c = ok(&minimal_with(
        "server: {header_timeout: 2s, keepalive_timeout: 250ms}\n",
    ));
    assert_eq!(c.server.header_timeout, Duration::from_secs(2));
    assert_eq!(c.server.keepalive_timeout, Duration::from_millis(250));
    let e = errs(&minimal_with(
        "server: {header_timeout: 0s, keepalive_timeout: soon}\n",
    ));
    let got: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(got.len(), 2, "\n{}", lines(&e));
    assert!(
        got[0].contains("header_timeout") && got[0].contains("greater than zero"),
        "{got:?}"
    );
    assert!(
        got[1].contains("keepalive_timeout") && got[1].contains("invalid duration"),
        "{got:?}"
    );
    let e = errs(&minimal_with(
        "server: {threads: 0}\nidentity: {header_prefix: \"X Session\"}\n",
    ));
    let got: Vec<String> = e.iter().map(|e| format!("{}:{}", e.line, e.col)).collect();
    assert_eq!(got, ["7:19", "8:27"], "\n{}", lines(&e));
}

#[test]
fn duration_parsing() {
    let d = |s| parse_duration(s);
    assert_eq!(d("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(d("30s"), Some(Duration::from_secs(30)));
    assert_eq!(d("15m"), Some(Duration::from_secs(900)));
    assert_eq!(d("24h"), Some(Duration::from_secs(86_400)));
    assert_eq!(d("30d"), Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(d("0s"), Some(Duration::ZERO));
    assert_eq!(d("0"), Some(Duration::ZERO));
    assert_eq!(d("1h30m"), Some(Duration::from_secs(5_400)));
    for bad in [
        "",
        "30",
        "s",
        "30 s",
        "-5s",
        "1.5s",
        "30sec",
        "5w",
        "99999999999999999999d",
    ] {
        assert_eq!(d(bad), None, "{bad}");
    }
}

#[test]
fn rate_parsing() {
    let r = |count, secs| {
        Some(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    };
    assert_eq!(parse_rate("10/min"), r(10, 60));
    assert_eq!(parse_rate("5/s"), r(5, 1));
    assert_eq!(parse_rate("100/hour"), r(100, 3_600));
    assert_eq!(parse_rate("2/day"), r(2, 86_400));
    assert_eq!(parse_rate("3/10s"), r(3, 10));
    assert_eq!(parse_rate("7/minute"), r(7, 60));
    for bad in ["10", "0/min", "10/0s", "x/min", "10/fortnight", "-1/s"] {
        assert_eq!(parse_rate(bad), None, "{bad}");
    }
}

const USERS: &str = "\
users:
  - username: alice
    password_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\"
    id: u-alice
    name: Alice
    roles: [player]
    vars: {tier: gold}
  - username: bob
    password_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\"
";

#[test]
fn users_file_parses() {
    let users = parse_users(USERS, Path::new("users.yaml")).unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0].id, "u-alice");
    assert_eq!(users[0].name, "Alice");
    assert_eq!(users[0].roles, vec!["player"]);
    assert_eq!(users[0].vars.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(users[1].id, "bob", "id defaults to the username");
    assert_eq!(users[1].name, "");
    assert!(users[1].roles.is_empty() && users[1].vars.is_empty());
    assert!(
        !format!("{:?}", users[0]).contains("argon2id"),
        "hashes stay out of Debug"
    );
}

#[test]
fn users_file_errors_are_located() {
    let bad = format!(
        "{USERS}  - username: alice\n    password_hash: plain\n    vars: {{\"bad key\": x}}\n"
    );
    let e = parse_users(&bad, Path::new("users.yaml")).unwrap_err();
    let got: Vec<String> = e.iter().map(|e| format!("{}:{}", e.line, e.col)).collect();
    assert_eq!(got, ["10:15", "11:20", "12:12"], "\n{}", lines(&e));
    assert!(
        e[0].message.contains("first used at users.yaml:2:15"),
        "{}",
        lines(&e)
    );
    let e = parse_users(
        "users:\n  - username: a\n    password: x\n",
        Path::new("u.yaml"),
    )
    .unwrap_err();
    assert!(
        only(&e).starts_with("3:5: users[0]: unknown field `password`"),
        "{}",
        lines(&e)
    );
}

#[test]
fn secrets_stay_out_of_debug() {
    let c = ok(SPEC_EXAMPLE);
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cret-admin"), "{debug}");
    assert!(debug.contains("<32 bytes>"), "{debug}");
}

#[test]
fn shipped_example_config_parses() {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/sessiongate.yaml"
    ));
    let c = match parse(text, Path::new("conf/sessiongate.yaml"), &env) {
        Ok(c) => c,
        Err(errors) => panic!("{}", lines(&errors)),
    };
    assert_eq!(c.store.kind, StoreKind::Redis);
    assert_eq!(c.admin.unwrap().token.as_deref(), Some("s3cret-admin"));
    assert!(c.login.is_some());
    // The admin token defaults to empty (admin API closed): only the key must be set.
    let only_key = |name: &str| (name == "SESSIONGATE_KEY").then(|| SECRET.to_owned());
    let c = parse(text, Path::new("conf/sessiongate.yaml"), &only_key).unwrap();
    assert!(c.admin.unwrap().token.is_none());
}

#[test]
fn shipped_users_file_verifies_alice() {
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    let users = parse_users(
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/users.yaml")),
        Path::new("conf/users.yaml"),
    )
    .unwrap();
    let alice = users.iter().find(|u| u.username == "alice").unwrap();
    assert_eq!(alice.roles, vec!["player"]);
    assert_eq!(alice.vars.get("tier").map(String::as_str), Some("gold"));
    let hash = PasswordHash::new(&alice.password_hash).unwrap();
    assert!(
        Argon2::default()
            .verify_password(b"wonderland", &hash)
            .is_ok()
    );
    assert!(
        Argon2::default()
            .verify_password(b"looking-glass", &hash)
            .is_err()
    );
}

#[test]
fn store_tls_needs_rediss_urls_and_a_readable_pem() {
    let dir = std::env::temp_dir().join(format!("sg-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let with = |store: &str| MINIMAL.replace("store: {kind: memory}", store);
    let c = ok(&with(&format!(
        "store: {{url: \"rediss://r:6380/0\", tls: {{ca_file: \"{}\"}}}}",
        ca.display()
    )));
    assert_eq!(c.store.tls_ca, Some(std::fs::read(&ca).unwrap()));
    ok(&with(&format!(
        "store: {{cluster: [\"rediss://a:7000\", \"rediss://b:7000\"], tls: {{ca_file: \"{}\"}}}}",
        ca.display()
    )));
    let e = errs(&with(&format!(
        "store: {{url: \"redis://r:6379/0\", tls: {{ca_file: \"{}\"}}}}",
        ca.display()
    )));
    assert!(
        only(&e).starts_with("2:34: store.tls: needs `rediss://` URLs"),
        "{}",
        lines(&e)
    );
    let e = errs(&with(&format!(
        "store: {{url: \"rediss://r\", tls: {{ca_file: \"{}\"}}}}",
        not_pem.display()
    )));
    assert!(
        only(&e).contains("store.tls.ca_file: holds no PEM certificate"),
        "{}",
        lines(&e)
    );
    let e = errs(&with(
        "store: {url: \"rediss://r\", tls: {ca_file: /nonexistent/ca.pem}}",
    ));
    assert!(
        only(&e).contains("cannot read /nonexistent/ca.pem"),
        "{}",
        lines(&e)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn route_tls_names_the_upstream_and_loads_a_ca_that_parses() {
    let c = ok(&format!("{MINIMAL}    tls: {{}}\n"));
    let tls = c.routes[0].tls.as_ref().unwrap();
    assert_eq!(
        tls.sni, "127.0.0.1",
        "defaults to the first upstream's host"
    );
    assert!(tls.ca.is_none());
    let c = ok(&format!("{MINIMAL}    tls: {{sni: api.internal}}\n"));
    assert_eq!(c.routes[0].tls.as_ref().unwrap().sni, "api.internal");

    let e = errs(&format!(
        "{MINIMAL}    tls: {{ca_file: /nonexistent/ca.pem}}\n"
    ));
    assert!(
        only(&e).starts_with("12:20: routes[0].tls.ca_file: /nonexistent/ca.pem: cannot read"),
        "{}",
        lines(&e)
    );
    let dir = std::env::temp_dir().join(format!("sg-config-rtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bogus = dir.join("bogus.pem");
    std::fs::write(
        &bogus,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = errs(&format!(
        "{MINIMAL}    tls: {{ca_file: \"{}\"}}\n",
        bogus.display()
    ));
    assert!(only(&e).contains("does not parse"), "{}", lines(&e));
    let _ = std::fs::remove_dir_all(&dir);

    let gateway = MINIMAL.replace("kind: controller", "kind: gateway");
    let c = ok(&format!("{gateway}    tls: {{sni: chat.internal}}\n"));
    assert_eq!(c.routes[0].tls.as_ref().unwrap().sni, "chat.internal");
}

#[test]
fn login_origins_and_hashing_are_checked() {
    let c = ok(&minimal_with(
        "login:\n  users_file: u.yaml\n  origins: [\"HTTPS://App.Example.com:443\"]\n  hashing: {workers: 1, queue: 0}\n",
    ));
    let login = c.login.unwrap();
    assert_eq!(login.origins, ["https://app.example.com"]);
    assert_eq!(
        login.hashing,
        HashingConfig {
            workers: 1,
            queue: 0
        }
    );
    let c = ok(&minimal_with("login:\n  users_file: u.yaml\n"));
    let login = c.login.unwrap();
    assert!(login.origins.is_empty());
    assert_eq!(
        login.hashing,
        HashingConfig {
            workers: 2,
            queue: 32
        }
    );
    let e = errs(&minimal_with(
        "login:\n  users_file: u.yaml\n  origins: [\"null\", \"https://a.com/x\"]\n  hashing: {workers: 0, queue: -1}\n",
    ));
    let got: Vec<&str> = e
        .iter()
        .map(|e| e.message.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        got,
        [
            "login.origins[0]",
            "login.origins[1]",
            "login.hashing.workers",
            "login.hashing.queue"
        ],
        "{}",
        lines(&e)
    );
}

#[test]
fn cache_budgets_take_bytes_or_units_and_default_to_32_mib() {
    let c = ok(MINIMAL);
    assert_eq!(c.store.cache_max_bytes, 32 << 20);
    assert_eq!(c.tickets.cache_max_bytes, 32 << 20);
    let c = ok(&MINIMAL
        .replace(
            "store: {kind: memory}",
            "store: {kind: memory, cache_max_bytes: 1048576}",
        )
        .replace("  keys:\n", "  cache_max_bytes: 256MiB\n  keys:\n"));
    assert_eq!(c.store.cache_max_bytes, 1 << 20);
    assert_eq!(c.tickets.cache_max_bytes, 256 << 20);
}

#[test]
fn bad_cache_budget_is_located() {
    let e = errs(&MINIMAL.replace("  keys:\n", "  cache_max_bytes: 64 megs\n  keys:\n"));
    assert_eq!(
        only(&e),
        "4:20: tickets.cache_max_bytes: invalid size `64 megs`: expected bytes or a number and a unit (KiB, MiB, GiB), like `64MiB`"
    );
    let e = errs(&MINIMAL.replace("  keys:\n", "  cache_max_bytes: 1KiB\n  keys:\n"));
    assert_eq!(
        only(&e),
        "4:20: tickets.cache_max_bytes: `1KiB` is too small: at least 64KiB"
    );
}

#[test]
fn users_file_vars_may_not_differ_only_in_case() {
    let bad = format!(
        "{USERS}  - username: carol\n    password_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\"\n    vars: {{orgId: \"1\", orgid: \"2\"}}\n"
    );
    let e = parse_users(&bad, Path::new("users.yaml")).unwrap_err();
    assert!(
        only(&e)
            .contains("users[2].vars.orgid: var name `orgid` differs from `orgId` only in case"),
        "{}",
        lines(&e)
    );
}

#[test]
fn sizes_parse_with_binary_and_decimal_units() {
    use crate::config::parse_bytes;
    assert_eq!(parse_bytes("4096"), Some(4096));
    assert_eq!(parse_bytes("512KiB"), Some(512 << 10));
    assert_eq!(parse_bytes("64 MiB"), Some(64 << 20));
    assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
    assert_eq!(parse_bytes("2MB"), Some(2_000_000));
    assert_eq!(parse_bytes("MiB"), None);
    assert_eq!(parse_bytes("12Mb"), None);
    assert_eq!(parse_bytes("99999999999999GiB"), None);
}

#[test]
fn clients_parse_cidrs_and_locate_a_bad_one() {
    let c = ok(&minimal_with(
        "clients:\n  proxy_protocol: true\n  trusted_proxies: [\"10.0.0.0/8\", \"::1\"]\n",
    ));
    assert!(c.clients.proxy_protocol);
    assert_eq!(c.clients.trusted_proxies.len(), 2);
    assert!(c.clients.trusted_proxies[0].contains("10.9.8.7".parse().unwrap()));
    let e = errs(&minimal_with(
        "clients:\n  trusted_proxies: [\"10.0.0.0/8\", \"10.0.0.0/40\"]\n",
    ));
    assert!(
        only(&e).starts_with("8:35: clients.trusted_proxies[1]: `10.0.0.0/40`: the prefix"),
        "{}",
        lines(&e)
    );
    // Absent: nothing trusted, no PROXY header.
    let c = ok(MINIMAL);
    assert!(!c.clients.proxy_protocol && c.clients.trusted_proxies.is_empty());
    assert!(c.tls.is_none());
}

#[test]
fn tls_keys_are_checked_where_they_are_written() {
    let e = errs(&minimal_with(
        "tls:\n  listen: [\"127.0.0.1:6090\"]\n  certificates: []\n  min_version: \"1.1\"\n  hsts: \"\"\n",
    ));
    let all = lines(&e);
    assert!(
        all.contains("gate.yaml:8:12: tls.listen[0]: `127.0.0.1:6090` is also a plain"),
        "{all}"
    );
    assert!(
        all.contains("gate.yaml:9:3: tls.certificates: at least one certificate"),
        "{all}"
    );
    assert!(
        all.contains("gate.yaml:10:16: tls.min_version: unknown value `1.1`"),
        "{all}"
    );
    assert!(
        all.contains("gate.yaml:11:9: tls.hsts: must be a non-empty header value"),
        "{all}"
    );
    // A certificate file that is not there is named.
    let e = errs(&minimal_with(
        "tls:\n  listen: [\"127.0.0.1:6443\"]\n  certificates:\n    - {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}\n",
    ));
    assert!(
        only(&e).contains("tls.certificates[0]: /nonexistent/c.pem: cannot read"),
        "{}",
        lines(&e)
    );
}

#[test]
fn listen_may_be_empty_only_with_tls_listen() {
    let e = errs(&MINIMAL.replace("listen: 127.0.0.1:6090", "listen: []"));
    assert!(
        only(&e).contains("at least one address is required"),
        "{}",
        lines(&e)
    );
    let e = errs(&MINIMAL.replace("listen: 127.0.0.1:6090\n", ""));
    assert!(
        only(&e).contains("`listen` (or `tls.listen`) is required"),
        "{}",
        lines(&e)
    );
}

#[test]
fn port_zero_listeners_never_share_an_address() {
    let c = ok(&MINIMAL.replace(
        "listen: 127.0.0.1:6090\n",
        "listen: [\"127.0.0.1:0\", \"127.0.0.1:0\"]\nadmin: {listen: \"127.0.0.1:0\", token: t}\n",
    ));
    assert_eq!(c.listen.len(), 2);
    assert_eq!(c.admin.map(|a| a.listen.port()), Some(0));
    let e = errs(&MINIMAL.replace(
        "listen: 127.0.0.1:6090\n",
        "listen: [\"127.0.0.1:6090\", \"127.0.0.1:6090\"]\n",
    ));
    assert!(
        lines(&e).contains("`127.0.0.1:6090` is listed twice"),
        "{}",
        lines(&e)
    );
}

/// The one error as `FILE:LINE:COL: message`.
fn only_full(text: &str) -> String {
    let e = errs(text);
    assert_eq!(e.len(), 1, "expected one error:\n{}", lines(&e));
    e[0].to_string()
}

#[test]
fn duplicate_keys_are_located_at_the_second() {
    let twice = MINIMAL.replace(
        "    kind: controller\n",
        "    kind: controller\n    kind: gateway\n",
    );
    assert_eq!(only_full(&twice), "gate.yaml:10:5: duplicate key `kind`");
    assert_eq!(
        only_full(&format!("{MINIMAL}listen: 127.0.0.1:1\n")),
        "gate.yaml:12:1: duplicate key `listen`"
    );
    assert_eq!(
        only_full(&MINIMAL.replace(
            "store: {kind: memory}",
            "store: {kind: memory, kind: redis}"
        )),
        "gate.yaml:2:23: duplicate key `kind`"
    );
}

#[test]
fn wrong_types_are_located_and_name_the_node() {
    assert_eq!(
        only_full(&minimal_with("sessions: {max_per_user: lots}\n")),
        "gate.yaml:7:26: sessions.max_per_user: expected a whole number"
    );
    assert_eq!(
        only_full(&MINIMAL.replace(
            "    kind: controller\n",
            "    kind: controller\n    strip_prefix: maybe\n"
        )),
        "gate.yaml:10:19: routes[0].strip_prefix: expected `true` or `false`"
    );
    assert_eq!(
        only_full(&MINIMAL.replace("    path: /api\n", "    path: [/api]\n")),
        "gate.yaml:10:11: routes[0].path: expected string scalar"
    );
    assert_eq!(
        only_full(&MINIMAL.replace(
            "    upstreams: [\"127.0.0.1:7003\"]\n",
            "    upstreams: {a: b}\n"
        )),
        "gate.yaml:11:16: routes[0].upstreams: expected sequence start"
    );
    // After a substitution much longer than `${SESSIONGATE_KEY}`, on the same line.
    assert_eq!(
        only_full(&minimal_with(
            "sessions: {ttl: \"${SESSIONGATE_KEY}\", max_per_user: lots}\n"
        )),
        "gate.yaml:7:53: sessions.max_per_user: expected a whole number"
    );
}

#[test]
fn missing_and_unknown_fields_name_their_mapping() {
    assert_eq!(
        only_full(&MINIMAL.replace("    kind: controller\n", "")),
        "gate.yaml:8:5: routes[0]: missing field `kind`"
    );
    assert_eq!(
        only_full(&MINIMAL.replace("    - id: k1\n", "    - id_: k1\n")),
        "gate.yaml:5:7: tickets.keys[0]: unknown field `id_`, expected one of id, secret"
    );
    assert_eq!(
        only_full(&MINIMAL.replace("    - id: k1\n", "    - \n")),
        "gate.yaml:6:7: tickets.keys[0]: missing field `id`"
    );
    // Merge keys are not expanded (as before): `<<` is a key like any other.
    let merged = MINIMAL.replace("store: {kind: memory}", "store:\n  <<: {kind: memory}");
    let msg = only_full(&merged);
    assert!(
        msg.starts_with("gate.yaml:3:3: store: unknown field `<<`"),
        "{msg}"
    );
}

#[test]
fn yaml_syntax_errors_are_located() {
    assert_eq!(
        only_full(&MINIMAL.replace("store: {kind: memory}", "store: {kind: memory")),
        "gate.yaml:3:8: while parsing a flow mapping, did not find expected ',' or '}'"
    );
    assert_eq!(
        only_full(&format!("{MINIMAL}    auth: \"required\n")),
        "gate.yaml:12:11: unclosed quote"
    );
    assert_eq!(
        only_full(&format!(
            "{MINIMAL}  - name: b\n    upstreams: [\"127.0.0.1:1\",\n"
        )),
        "gate.yaml:13:16: unclosed bracket '['"
    );
}

#[test]
fn a_tab_in_the_indentation_is_located_at_the_tab() {
    let tabbed = MINIMAL.replace("    kind: controller\n", "\tkind: controller\n");
    assert_eq!(
        only_full(&tabbed),
        "gate.yaml:9:1: a tab in the indentation: YAML indents with spaces only"
    );
    let tabbed = MINIMAL.replace("    kind: controller\n", "  \t  kind: controller\n");
    assert_eq!(
        only_full(&tabbed),
        "gate.yaml:9:3: a tab in the indentation: YAML indents with spaces only"
    );
    // A tab separating a value is not indentation.
    ok(&MINIMAL.replace("    kind: controller\n", "    kind:\tcontroller\n"));
}

#[test]
fn a_file_holds_exactly_one_document() {
    assert_eq!(
        only_full(&format!("{MINIMAL}---\nlisten: 127.0.0.1:1\n")),
        "gate.yaml:13:1: a second YAML document: the file must hold exactly one (remove the `---`)"
    );
    ok(&format!("---\n{MINIMAL}...\n"));
    assert_eq!(
        only_full(""),
        "gate.yaml:1:1: no YAML document: the file is empty or only comments"
    );
    assert_eq!(
        only_full("# nothing here\n"),
        "gate.yaml:2:1: no YAML document: the file is empty or only comments"
    );
    let e = parse_users("", Path::new("users.yaml")).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "users.yaml:1:1: no YAML document: the file is empty or only comments"
    );
}

#[test]
fn json_config_parses_and_locates_errors() {
    let json = "{\"listen\": \"127.0.0.1:6090\", \"store\": {\"kind\": \"memory\"},\n\t\"tickets\": {\"keys\": [{\"id\": \"k1\", \"secret\": \"${SESSIONGATE_KEY}\"}]},\n\t\"routes\": [{\"name\": \"api\", \"kind\": \"controller\", \"path\": \"/api\", \"upstreams\": [\"127.0.0.1:7003\"]}]\n}\n";
    let c = ok(json);
    assert_eq!(c.routes[0].name, "api");
    assert_eq!(c.tickets.keys[0].secret.len(), 32);
    // Columns count in the file, past the substituted secret on line 2.
    let bad = json.replace("\"/api\"", "\"api\"");
    assert_eq!(
        only_full(&bad),
        "gate.yaml:3:59: routes[0].path: `api` must start with `/`"
    );
    let bad = json.replace(
        "\"kind\": \"memory\"",
        "\"kind\": \"memory\", \"colour\": 1",
    );
    let msg = only_full(&bad);
    assert!(
        msg.starts_with("gate.yaml:1:58: store: unknown field `colour`"),
        "{msg}"
    );
    let bad = json.replace("{\"id\": \"k1\",", "{\"id\": \"k1\", \"id\": \"k2\",");
    assert_eq!(only_full(&bad), "gate.yaml:2:36: duplicate key `id`");
}
