//! sessiongate: an edge reverse proxy, on Pingora, that owns user sessions
//! for the services behind it.
//!
//! A request's path through the gate:
//!
//! ```text
//! client ──► proxy::request_filter
//!              │ limits (414/431) → route::normalize_path (400)
//!              │ /_session/* ───────────────► api (login, info, refresh, …) ──► store
//!              │ route::RouteTable::find (404 no_route)
//!              │ Origin allowlist (WebSocket handshakes, 403)
//!              │ credentials::find_ticket → ticket::KeyRing::verify (401 invalid_ticket)
//!              │ gate::Gate::admit → liveness cache | store::check (one round trip)
//!              │                     (401 session_<status>, 503 store_unavailable)
//!              │ roles (403 forbidden)
//!              │ WebSocket on a gateway route ──► handshake with the upstream
//!              │   (502/504) ──► 101 ──► tunnel::Relay owns both sockets
//!              ▼
//!            proxy::upstream_peer (round robin over healthy upstreams)
//!            proxy::upstream_request_filter
//!              │ strip forged identity headers, ticket cookie and ?ticket=;
//!              │ inject X-Session-*, X-Forwarded-*
//!              ▼
//!            upstream ──► response ──► client
//! ```
//!
//! Status changes from any node arrive on the store's event channel and end
//! that session's tunnels with Close 4401 (`tunnel`).

pub mod accesslog;
pub mod admin;
pub mod api;
pub mod config;
pub mod credentials;
pub mod echo;
pub mod gate;
pub mod handshake;
pub mod health;
pub mod login;
pub mod logwriter;
pub mod metrics;
pub mod proxy;
pub mod reject;
pub mod route;
pub mod server;
pub mod session;
pub mod store;
pub mod ticket;
pub mod tunnel;
