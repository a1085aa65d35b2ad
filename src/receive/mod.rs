//! The receive path: an HTTP request becomes a verified, routed, admitted delivery.
//!
//! [`server`] accepts connections (limits, drain, TLS) and hands each request to [`handler`],
//! which reads the body under its limit, checks it with [`signature`] on the raw bytes,
//! classifies it with [`envelope`], picks its sinks with [`route`] and admits it to the store
//! before answering. Only [`handler`] knows HTTP status codes; [`signature`], [`envelope`] and
//! [`route`] are pure. What happens to an admitted delivery afterwards (the dispatchers, the
//! sinks) is not here.

pub mod envelope;
pub mod handler;
pub mod route;
pub mod server;
pub mod signature;
