//! Every black-box test in one binary: each module was once its own file
//! under `tests/`, and each linked the whole crate with Pingora; one binary
//! links it once. `support` is the harness they share (real redis-server,
//! real upstreams, the real `sessiongate` binary over TCP).

#![allow(clippy::unwrap_used)]

mod support;

mod attacks;
mod attacks_h2;
mod cli;
mod cluster;
mod edge;
mod gate;
mod lifecycle;
mod login_security;
mod ops;
mod store_contract;
mod websocket;
