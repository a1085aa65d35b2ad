//! The delivery side: feeding each sink from the store. [`dispatcher`] claims due entries,
//! hands them to the sink and settles each claim; [`backoff`] decides how long a failed attempt
//! waits and which answers are retried. Where the events go is the business of
//! [`crate::sinks`]; what is due and who holds a claim is the store's.

pub mod backoff;
pub mod dispatcher;

pub use dispatcher::{run, run_until, Plan};
