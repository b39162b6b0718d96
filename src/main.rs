//! The `sessiongate` command line (SPEC section 2).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sessiongate::{config, login, logwriter, server, ticket};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for a config that does not load (sysexits EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "sessiongate",
    version,
    about = "An edge reverse proxy that owns user sessions"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve.
    Run {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take over the listening sockets of the running gate (found by
        /// `server.pid_file`), which then drains and exits.
        #[arg(long)]
        upgrade: bool,
        /// Once every listener accepts connections, write their bound
        /// addresses here as JSON (port-0 addresses get their real port).
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
    },
    /// Validate a config; print every error as FILE:LINE:COL: message.
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// One-command tour: memory store, a demo user, built-in echo upstreams.
    Demo {
        /// Gate listen address.
        #[arg(long, default_value = "127.0.0.1:6090")]
        listen: String,
        /// Admin listen address.
        #[arg(long, default_value = "127.0.0.1:6091")]
        admin: String,
        /// Echo HTTP controller upstream address.
        #[arg(long, default_value = "127.0.0.1:7101")]
        http_echo: String,
        /// Echo WebSocket gateway upstream address.
        #[arg(long, default_value = "127.0.0.1:7102")]
        ws_echo: String,
    },
    /// Print a fresh random 256-bit secret, base64url.
    Keygen,
    /// Read a password from stdin, print its argon2id PHC string.
    HashPassword,
    /// Ticket tools.
    Ticket {
        #[command(subcommand)]
        cmd: TicketCmd,
    },
    /// Serve the built-in echo upstreams only (for benchmarks and load tests).
    Echo {
        #[arg(long, default_value = "127.0.0.1:7101")]
        http: String,
        #[arg(long, default_value = "127.0.0.1:7102")]
        ws: String,
    },
}

#[derive(Subcommand)]
enum TicketCmd {
    /// Print the ticket's header and claims; with a config, whether the signature verifies.
    Inspect {
        ticket: String,
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("SESSIONGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("conf/sessiongate.yaml"))
}

/// Logs to stderr through the batching writer (`logwriter`): the access log is one line per
/// request, and one `write(2)` plus a thread wake-up per line cost the gate about 10 % of its CPU.
/// `None` when the flusher thread cannot start: logging then goes straight to stderr.
fn init_logs(format: LogFormat) -> Option<logwriter::Guard> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SESSIONGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let (writer, guard) = match logwriter::LogWriter::spawn(
        std::io::stderr(),
        logwriter::FLUSH_INTERVAL,
        logwriter::CAPACITY,
    ) {
        Ok((w, g)) => (w, g),
        Err(e) => {
            eprintln!("sessiongate: cannot start the log writer ({e}); logging unbuffered");
            match format {
                LogFormat::Human => builder.with_writer(std::io::stderr).init(),
                LogFormat::Json => builder
                    .with_writer(std::io::stderr)
                    .json()
                    .flatten_event(true)
                    .init(),
            }
            return None;
        }
    };
    // The SIGTERM drain ends in `std::process::exit`, which runs no destructor: it flushes
    // through this instead.
    guard.install_for_process();
    // Access lines skip tracing's formatter but keep its filter (`accesslog`).
    let access_format = match format {
        LogFormat::Human => sessiongate::accesslog::Format::Human,
        LogFormat::Json => sessiongate::accesslog::Format::Json,
    };
    sessiongate::accesslog::install(writer.line_sink(), access_format);
    // Each event is escaped as it is handed over, whole: no control character
    // from client input reaches a line, in either format (access lines escape
    // their own fields in `accesslog`).
    let builder = builder.with_writer(move || sessiongate::logs::Escaping(writer.clone()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Some(guard)
}

fn print_config_errors(errors: &[config::ConfigError]) {
    let mut err = std::io::stderr().lock();
    for e in errors {
        let _ = writeln!(err, "{e}");
    }
}

/// `check` warns, without failing, about certificates close to expiry.
fn warn_expiring(cfg: &sessiongate::config::Config) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for c in cfg.tls.iter().flat_map(|t| t.certificates.certs.iter()) {
        let left = c.not_after - now;
        if left < sessiongate::tls::EXPIRY_WARNING_SECS {
            let at = time::OffsetDateTime::from_unix_timestamp(c.not_after)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            eprintln!(
                "warning: {}: certificate for {} expires at {at}, in {} days",
                c.cert_file.display(),
                c.names.join(", "),
                left / 86_400
            );
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Keygen => {
            println!("{}", ticket::new_secret());
            ExitCode::SUCCESS
        }
        Cmd::HashPassword => hash_password(),
        Cmd::Check { config } => {
            let path = config_path(config);
            match server::load(&path) {
                Ok((cfg, _)) => {
                    warn_expiring(&cfg);
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    print_config_errors(&errors);
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Ticket {
            cmd: TicketCmd::Inspect { ticket, config },
        } => inspect(&ticket, config.as_deref()),
        Cmd::Run {
            config,
            upgrade,
            ready_file,
        } => {
            let _guard = init_logs(cli.log_format);
            let path = config_path(config);
            let (cfg, users) = match server::load(&path) {
                Ok(x) => x,
                Err(errors) => {
                    print_config_errors(&errors);
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            match server::run(path, cfg, users, None, upgrade, ready_file) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sessiongate: {e}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
        Cmd::Demo {
            listen,
            admin,
            http_echo,
            ws_echo,
        } => {
            let _guard = init_logs(cli.log_format);
            demo(&listen, &admin, &http_echo, &ws_echo)
        }
        Cmd::Echo { http, ws } => {
            let _guard = init_logs(cli.log_format);
            echo_only(&http, &ws)
        }
    }
}

fn hash_password() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("sessiongate: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = input.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("sessiongate: empty password");
        return ExitCode::FAILURE;
    }
    match login::hash_password(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sessiongate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(t: &str, config: Option<&Path>) -> ExitCode {
    let (header, claims) = match ticket::decode_unverified(t) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("sessiongate: not a ticket: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = serde_json::json!({"header": header, "claims": claims});
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    if let Some(path) = config {
        let cfg = match config::load(path) {
            Ok(c) => c,
            Err(errors) => {
                print_config_errors(&errors);
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        };
        let ring = ticket::KeyRing::new(
            cfg.tickets
                .keys
                .iter()
                .map(|k| ticket::Key::new(k.id.clone(), k.secret.clone()))
                .collect(),
            cfg.tickets.issuer.clone(),
            cfg.tickets.leeway.as_secs(),
        );
        match ring.verify_signature_only(t) {
            Ok(_) => println!("signature: valid"),
            Err(e) => {
                println!("signature: INVALID ({e})");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn bind(addr: &str) -> Result<std::net::TcpListener, ExitCode> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        eprintln!("sessiongate: cannot listen on {addr}: {e}");
        ExitCode::FAILURE
    })?;
    l.set_nonblocking(true).map_err(|_| ExitCode::FAILURE)?;
    Ok(l)
}

fn echo_only(http: &str, ws: &str) -> ExitCode {
    let (h, w) = match (bind(http), bind(ws)) {
        (Ok(h), Ok(w)) => (h, w),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessiongate: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let (Ok(h), Ok(w)) = (
            tokio::net::TcpListener::from_std(h),
            tokio::net::TcpListener::from_std(w),
        ) else {
            return ExitCode::FAILURE;
        };
        eprintln!("echo upstreams: http://{http}  ws://{ws}");
        tokio::join!(
            sessiongate::echo::serve_http(h),
            sessiongate::echo::serve_ws(w)
        );
        ExitCode::SUCCESS
    })
}

struct EchoService {
    http: std::sync::Mutex<Option<std::net::TcpListener>>,
    ws: std::sync::Mutex<Option<std::net::TcpListener>>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for EchoService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let take = |m: &std::sync::Mutex<Option<std::net::TcpListener>>| {
            m.lock()
                .ok()
                .and_then(|mut g| g.take())
                .and_then(|l| tokio::net::TcpListener::from_std(l).ok())
        };
        let (Some(h), Some(w)) = (take(&self.http), take(&self.ws)) else {
            tracing::error!("demo echo upstreams could not start");
            return;
        };
        tokio::select! {
            _ = sessiongate::echo::serve_http(h) => {}
            _ = sessiongate::echo::serve_ws(w) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Serves the embedded demo page (`sessiongate::pages`) for `demo`.
struct PageService(std::sync::Mutex<Option<std::net::TcpListener>>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for PageService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let listener = self
            .0
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .and_then(|l| tokio::net::TcpListener::from_std(l).ok());
        let Some(l) = listener else {
            tracing::error!("demo page could not start");
            return;
        };
        tokio::select! {
            _ = sessiongate::pages::serve_demo(l) => {}
            _ = shutdown.changed() => {}
        }
    }
}

fn demo(listen: &str, admin: &str, http_echo: &str, ws_echo: &str) -> ExitCode {
    let (h, w) = match (bind(http_echo), bind(ws_echo)) {
        (Ok(h), Ok(w)) => (h, w),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    // The demo page's own upstream: a free loopback port, reached only through
    // the gate's public `/` route.
    let page = match bind("127.0.0.1:0") {
        Ok(p) => p,
        Err(c) => return c,
    };
    let page_addr = match page.local_addr() {
        Ok(a) => a,
        Err(_) => return ExitCode::FAILURE,
    };
    let dir = std::env::temp_dir().join(format!("sessiongate-demo-{}", std::process::id()));
    let users_file = dir.join("users.yaml");
    let hash = match login::hash_password("demo") {
        Ok(h) => h,
        Err(e) => {
            eprintln!("sessiongate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let users = format!(
        "users:\n  - username: demo\n    password_hash: \"{hash}\"\n    id: u-demo\n    name: Demo User\n    roles: [player]\n    vars: {{tier: gold}}\n"
    );
    let yaml = format!(
        r#"listen: ["{listen}"]
admin:
  listen: "{admin}"
  token: demo-admin-token
store:
  kind: memory
tickets:
  keys:
    - id: demo
      secret: {secret}
  cookie: {{name: sg_ticket, secure: false}}
sessions:
  ttl: 1h
  idle_timeout: 15m
login:
  users_file: {users}
routes:
  - name: chat
    kind: gateway
    path: /gateway/chat
    upstreams: ["{ws_echo}"]
    auth: required
    roles: [player]
  - name: echo
    kind: controller
    path: /controller/echo
    strip_prefix: true
    upstreams: ["{http_echo}"]
    auth: required
  - name: public
    kind: controller
    path: /public
    upstreams: ["{http_echo}"]
    auth: public
  - name: page
    kind: controller
    path: /
    upstreams: ["{page_addr}"]
    auth: public
"#,
        secret = ticket::new_secret(),
        users = users_file.display(),
    );
    let config_file = dir.join("sessiongate.yaml");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&users_file, users))
        .and_then(|()| std::fs::write(&config_file, &yaml));
    if let Err(e) = written {
        eprintln!(
            "sessiongate: cannot write demo config in {}: {e}",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    let (cfg, users) = match server::load(&config_file) {
        Ok(x) => x,
        Err(errors) => {
            print_config_errors(&errors);
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    println!(
        r#"sessiongate demo
  page   http://{listen}/    (the demo page: log in as demo / demo; open it in two tabs)
  gate   http://{listen}     admin http://{admin} (token: demo-admin-token; its page at /)
  config {config}
  user   demo / demo (roles: player, vars: tier=gold)

Try:
  # log in and keep the ticket
  T=$(curl -s -X POST http://{listen}/_session/login -H 'content-type: application/json' \
        -d '{{"username":"demo","password":"demo","vars":{{"device":"laptop"}}}}' | sed -E 's/.*"ticket":"([^"]+)".*/\1/')
  # an HTTP controller behind the gate: see the X-Session-* headers it received
  curl -s http://{listen}/controller/echo/hello -H "Authorization: Bearer $T"
  # without a ticket: 401 missing_ticket
  curl -si http://{listen}/controller/echo/hello
  # the WebSocket gateway (echo)
  websocat "ws://{listen}/gateway/chat?ticket=$T"
  # your session, your sessions, log out
  curl -s http://{listen}/_session -H "Authorization: Bearer $T"
  curl -s http://{listen}/_session/list -H "Authorization: Bearer $T"
  curl -si -X POST http://{listen}/_session/logout -H "Authorization: Bearer $T"
  # metrics
  curl -s http://{admin}/metrics | grep sessiongate_
"#,
        config = config_file.display(),
    );
    let echo = EchoService {
        http: std::sync::Mutex::new(Some(h)),
        ws: std::sync::Mutex::new(Some(w)),
    };
    let page = PageService(std::sync::Mutex::new(Some(page)));
    let extra: server::Extra = Box::new(move |srv: &mut pingora::server::Server| {
        srv.add_service(pingora::services::background::background_service(
            "demo-echo",
            echo,
        ));
        srv.add_service(pingora::services::background::background_service(
            "demo-page",
            page,
        ));
    });
    match server::run(config_file, cfg, users, Some(extra), false, None) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiongate: {e}");
            ExitCode::FAILURE
        }
    }
}
