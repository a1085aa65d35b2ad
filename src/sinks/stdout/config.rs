//! The config of a `stdout` sink: it takes no keys of its own (only the ones every kind
//! takes, checked by [`crate::config`]), and there can be one of it only, since one process has
//! one stdout and two sinks writing to it would interleave lines.

use crate::config::{invalid, ConfigError};
use crate::sinks::config::{Kind, KindKeys, SinkTable};
use crate::sinks::SinkKind;

/// `kind = "stdout"`, with no keys of its own.
pub const KIND: Kind = Kind {
    name: "stdout",
    keys: &[],
    validate_keys: validate,
    skip_missing_files: |_, _| Vec::new(),
};

/// Refuses a second stdout sink.
fn validate(_: &mut KindKeys, table: &SinkTable<'_>) -> Result<SinkKind, ConfigError> {
    if let Some(first) = table
        .earlier
        .iter()
        .position(|s| matches!(s.kind, SinkKind::Stdout))
    {
        return Err(invalid(
            format!("{}.kind", table.base),
            format!("only one stdout sink is possible (sinks[{first}] is one already)"),
        ));
    }
    Ok(SinkKind::Stdout)
}
