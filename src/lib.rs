//! sessiongate: an edge reverse proxy, on Pingora, that owns user sessions
//! for the services behind it.
//!
//! A request's path through the gate:
//!
//! ```text
//! client ──► listeners::EdgeApp (PROXY v1/v2 header, TLS with the tls::SniResolver
//!              │ certificate; Pingora picks HTTP/2 or HTTP/1.1 by ALPN)
//!            downstream::Downstream (whole head within header_timeout, else 408;
//!              │                     idle keep-alive closed after keepalive_timeout)
//!            proxy::request_filter (proxy/mod.rs: the hooks)
//!              │ https redirect (308) → client address (listeners::client_addr)
//!              │ limits (414/431) → Host / absolute-form authority (400, proxy/target.rs)
//!              │ path::normalize_path (400) → path::match_path (;params dropped)
//!              │ /_session/* ───────────────► api (login, info, refresh, …) ──► store
//!              │ route::RouteTable::find (404 no_route)
//!              │ WebSocket off a gateway route (400); any other Upgrade dropped
//!              │ Origin allowlist (WebSocket handshakes, 403)
//!              │ credentials::find_ticket → ticket::KeyRing::verify (401 invalid_ticket)
//!              │ gate::Gate::admit → cache (tickets, liveness) | store::check (one round trip)
//!              │                     (401 session_<status>, 503 store_unavailable)
//!              │ roles (403 forbidden)
//!              │ WebSocket on a gateway route ──► handshake with the upstream
//!              │   (proxy/handoff.rs; 502/504) ──► 101 ──► tunnel::Relay owns both sockets
//!              ▼
//!            proxy::upstream_peer (round robin over healthy upstreams; TLS material
//!              │                   built at load, upstream_tls, held by settings)
//!            proxy::upstream_request_filter → proxy/rewrite.rs, a pure function:
//!              │ strip forged identity headers, ticket cookie and ?ticket=;
//!              │ inject X-Session-*, X-Forwarded-* (For: the believed client)
//!              ▼
//!            upstream ──► response ──► client
//! ```
//!
//! `settings::Settings` is everything built from one config; a reload builds a new one off
//! the async runtime and swaps it in whole. Status changes go through `gate::Gate` (the
//! store is private to it); from any node they arrive on the store's event channel and end
//! that session's tunnels with Close 4401 (`tunnel`). Between events, `sweeper` re-checks
//! open tunnels' sessions in batches.

pub mod accesslog;
pub mod admin;
pub mod api;
pub mod bind;
pub mod cache;
pub mod clock;
pub mod config;
#[cfg(test)]
mod conformance;
pub mod credentials;
pub mod deadline;
pub mod downstream;
pub mod echo;
pub mod events;
pub mod gate;
pub mod handshake;
pub mod health;
pub mod http1;
pub mod identity;
pub mod inflight;
pub mod iptext;
pub mod listeners;
pub mod login;
pub mod logs;
pub mod logwriter;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod path;
pub mod proxy;
pub mod reject;
pub mod response;
pub mod route;
pub mod segment;
pub mod server;
pub mod session;
pub mod settings;
pub mod store;
pub mod sweeper;
pub mod ticket;
pub mod tls;
pub mod tunnel;
pub mod upstream_tls;
