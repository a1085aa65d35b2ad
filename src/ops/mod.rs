//! The command-line clients that talk to a running daemon or help an operator: the admin
//! commands ([`admin_cli`]: `status`, `dead-letters`, `quarantine`, `replay`), the live view
//! ([`tail`]: `kirimhook tail`), `accounts`
//! ([`accounts`], kirim.dev's API), `sign` and `send` ([`send`], playing kirim.dev's part), and
//! the base-URL check they share ([`client`]).
//!
//! Nothing here runs inside the daemon: these modules are reached from `main` only, and they
//! speak HTTP to the daemon or to kirim.dev instead of touching the store or the config.

pub mod accounts;
pub mod admin_cli;
pub mod client;
pub mod send;
pub mod tail;
