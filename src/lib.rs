//! kirimhook: a small, fast and trustworthy receiver for kirim.dev webhooks.
//!
//! kirim.dev POSTs signed deliveries; kirimhook verifies each one on its raw bytes, dedupes it
//! against every event it has seen, stores it durably (fsync, shared across concurrent requests)
//! before answering 200, and hands it to its sinks from the store, at least once and never twice
//! because kirim.dev retried.
//!
//! Codemap, in the order a delivery travels:
//! - [`receive`]: the receive path, request -> verified, routed, admitted delivery.
//!   - [`receive::server`]: hyper accept loop, connection limits, graceful drain; the TLS
//!     handshake with the certificate held by [`tls`] when `[server.tls]` is set.
//!   - [`receive::handler`]: body limit -> [`receive::signature`] -> [`receive::envelope`] ->
//!     [`store`]; the only place that knows HTTP status codes.
//!   - [`receive::signature`]: `X-Kirim-Signature` parsing and HMAC verification; pure.
//!   - [`receive::envelope`]: body shapes and dedupe keys; pure.
//!   - [`receive::route`]: which sinks an event is queued for (their filters); pure.
//! - [`store`]: the only code that knows fjall; group-committed admissions with one queue
//!   entry per matching sink, sink outcomes, dead letters, sweep.
//! - [`deliver`]: feeds each [`sinks`] `Sink` from the store (claim -> deliver -> settle):
//!   concurrency, back-off, pausing an unreachable sink, dead letters.
//! - [`sinks`]: the `Sink` trait, `SinkError` and `sinks::build`; one folder per kind
//!   ([`sinks::stdout`], [`sinks::http`], [`sinks::redis_stream`]), each owning its config
//!   keys (`<kind>/config.rs`, listed in [`sinks::config`]) and the classification of its own
//!   failures ([`sinks::http::classify`] for HTTP statuses, [`sinks::redis_stream::classify`]
//!   for Redis errors).
//! - [`metrics`]: counters the receive path and the dispatchers bump, and the live feed of
//!   what happens ([`activity`], for `kirimhook tail`); [`admin`] serves them with health,
//!   readiness and the operator API on a second, loopback listener.
//! - [`app`]: wires it all under one shutdown token and applies reloads (SIGHUP); [`config`],
//!   [`cli`] (imports nothing else from the crate), [`check`] (`check-config`), [`telemetry`],
//!   [`shutdown`] and [`systemd`] are the edges.
//! - [`ops`]: the command-line clients, never run inside the daemon: [`ops::admin_cli`] (the
//!   admin API's client), [`ops::tail`] (the live view), [`ops::accounts`], [`ops::send`]
//!   (`sign`, `send`) and [`ops::client`].
//! - [`health`]: faults no retry heals (stdout consumer gone, store gone): admissions stop with
//!   503, `/readyz` says why, and the daemon exits for its supervisor.
//! - [`time`]: stored millisecond times written as RFC 3339, without a panic for any value.

pub mod activity;
pub mod admin;
pub mod app;
pub mod check;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod health;
pub mod metrics;
pub mod ops;
pub mod receive;
pub mod shutdown;
pub mod sinks;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod units;
