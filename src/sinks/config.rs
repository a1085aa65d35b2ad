//! The kinds of sink as the config file sees them: which `kind` values exist, which keys of a
//! `[[sinks]]` table belong to which kind, and the hand-over from [`crate::config`] to each
//! kind's own validation.
//!
//! [`crate::config`] reads the keys every kind takes (`name`, `kind`, the filters, `retry`);
//! every other key must be declared by some kind in [`KINDS`] (else it is an unknown key, as
//! `deny_unknown_fields` would say) and is type-checked against that declaration while the
//! file is parsed, so a wrong type still names its key and line. The value then waits in
//! [`KindKeys`] until the sink's `kind` is known: [`Kind::validate`] refuses a key that belongs
//! to another kind and hands the rest to the kind's `config.rs`. This module does no I/O and
//! knows no kind's keys itself.

use serde::de::value::MapDeserializer;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, Error as _};
use serde::Deserialize;

use super::{http, nats, rabbitmq, redis_stream, stdout, SinkKind};
use crate::config::{invalid, ConfigError, NotChecked, SinkConfig};

/// Every sink kind, in the order `known kinds:` lists them.
pub const KINDS: &[Kind] = &[
    stdout::config::KIND,
    http::config::KIND,
    redis_stream::config::KIND,
    nats::config::KIND,
    rabbitmq::config::KIND,
];

/// A sink kind as the config file sees it.
pub struct Kind {
    /// Its `kind` value, such as `"http"`.
    pub name: &'static str,
    /// The keys this kind takes beside the ones every kind takes, in the order they are
    /// documented (and listed in an unknown-key error).
    pub keys: &'static [KindKey],
    /// Reads this kind's keys out of the table and validates them (after [`Kind::validate`]
    /// has refused the keys of other kinds).
    pub validate_keys: fn(&mut KindKeys, &SinkTable<'_>) -> Result<SinkKind, ConfigError>,
    /// For `check-config --skip-missing-secrets`: replaces the files of this kind's keys that
    /// do not exist with placeholders and says which; `base` is the table's key (`sinks[0]`).
    pub skip_missing_files: fn(&mut KindKeys, &str) -> Vec<NotChecked>,
}

impl Kind {
    /// Validates the kind-specific keys of a sink of this kind: the first key (in the order
    /// of [`kind_keys`]) that only other kinds take is refused, then the kind checks its own.
    pub fn validate(
        &self,
        mut keys: KindKeys,
        table: &SinkTable<'_>,
    ) -> Result<SinkKind, ConfigError> {
        let foreign = kind_keys().find(|key| keys.contains(key.name) && !self.takes(key.name));
        if let Some(key) = foreign {
            let owners: Vec<String> = KINDS
                .iter()
                .filter(|kind| kind.takes(key.name))
                .map(|kind| format!("kind = \"{}\"", kind.name))
                .collect();
            return Err(invalid(
                format!("{}.{}", table.base, key.name),
                format!(
                    "is only for {} (this sink is kind = \"{}\")",
                    owners.join(" or "),
                    self.name
                ),
            ));
        }
        (self.validate_keys)(&mut keys, table)
    }

    /// Whether this kind takes the key `name`.
    fn takes(&self, name: &str) -> bool {
        self.keys.iter().any(|key| key.name == name)
    }
}

/// The kind called `name`, if there is one.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|kind| kind.name == name)
}

/// Every kind-specific key once (a key two kinds take comes with the first), in the order of
/// [`KINDS`] and then of each kind's keys.
pub fn kind_keys() -> impl Iterator<Item = &'static KindKey> {
    let all = KINDS.iter().flat_map(|kind| kind.keys.iter());
    all.clone()
        .enumerate()
        .filter(move |(i, key)| all.clone().take(*i).all(|k| k.name != key.name))
        .map(|(_, key)| key)
}

/// The kind-specific key called `name`, if any kind takes it.
pub fn kind_key(name: &str) -> Option<&'static KindKey> {
    kind_keys().find(|key| key.name == name)
}

/// One key that only some kinds take, and the type its value must have.
pub struct KindKey {
    /// The key's name in the sink table, such as `url`.
    pub name: &'static str,
    check: fn(toml::Value) -> Result<(), String>,
}

impl KindKey {
    /// A key whose value must deserialize as `T`. Kinds that take the same key name declare it
    /// with the same `T` (the first declaration checks the value).
    pub const fn of<T: DeserializeOwned>(name: &'static str) -> Self {
        KindKey {
            name,
            check: check_as::<T>,
        }
    }
}

/// Checks that `value` deserializes as `T`, with serde's message if not.
fn check_as<T: DeserializeOwned>(value: toml::Value) -> Result<(), String> {
    match value {
        // toml's own deserializer hands a datetime over as a map of one private field, where
        // `toml::Value` would give a string: check it the way toml reads every other key.
        toml::Value::Datetime(date) => {
            let field = std::iter::once((DATETIME_FIELD, date.to_string()));
            T::deserialize(MapDeserializer::<_, serde::de::value::Error>::new(field))
                .map(drop)
                .map_err(|err| err.to_string())
        }
        value => T::deserialize(value)
            .map(drop)
            .map_err(|err| err.message().to_owned()),
    }
}

/// The field name toml gives a datetime when it hands one over as a map.
const DATETIME_FIELD: &str = "$__toml_private_datetime";

/// Reads the value of this key from the TOML being parsed and checks its type there, so that
/// a wrong type is reported at the value's line like any other key's.
impl<'de> DeserializeSeed<'de> for &'static KindKey {
    type Value = toml::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<toml::Value, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        (self.check)(value.clone()).map_err(D::Error::custom)?;
        Ok(value)
    }
}

/// What a kind's validation knows about the `[[sinks]]` table it checks.
pub struct SinkTable<'a> {
    /// The table's key, such as `sinks[0]`; errors name `{base}.{key}`.
    pub base: &'a str,
    /// The sink's validated name.
    pub name: &'a str,
    /// The sinks before this one in the file, already validated.
    pub earlier: &'a [SinkConfig],
    /// Resolves environment variables (`secret_env`).
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// The kind-specific keys of one `[[sinks]]` table as read, each of the type its
/// [`KindKey`] declares, until the sink's kind takes them. No `Debug`: values may be secrets.
#[derive(Default)]
pub struct KindKeys {
    values: Vec<(&'static str, toml::Value)>,
}

impl KindKeys {
    /// Sets `key` (a [`KindKey::name`]) to `value`, replacing an earlier value.
    pub fn insert(&mut self, key: &'static str, value: toml::Value) {
        self.remove(key);
        self.values.push((key, value));
    }

    /// Whether `key` is set.
    pub fn contains(&self, key: &str) -> bool {
        self.values.iter().any(|(name, _)| *name == key)
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.values
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value)
    }

    /// Removes `key` and returns its value, if set.
    pub fn remove(&mut self, key: &str) -> Option<toml::Value> {
        let at = self.values.iter().position(|(name, _)| *name == key)?;
        Some(self.values.remove(at).1)
    }

    /// Removes `key` and returns its value as a `T` (the type its [`KindKey`] declares, which
    /// was checked when the file was read); `base` names the table in the error if it is not.
    pub fn take<T: DeserializeOwned>(
        &mut self,
        base: &str,
        key: &str,
    ) -> Result<Option<T>, ConfigError> {
        self.remove(key)
            .map(|value| {
                T::deserialize(value).map_err(|err| invalid(format!("{base}.{key}"), err.message()))
            })
            .transpose()
    }
}

/// The URL of a broker sink from exactly one of its `url`, `url_env` and `url_file` keys (the
/// rules of `verify.secrets`), checked by `check` (value, key it came from); the error for
/// none names `<base>.url`, the `kind` and an `example`. Kept as a [`SecretString`]: it may
/// hold a password.
pub(crate) fn secret_url(
    keys: &mut KindKeys,
    table: &SinkTable<'_>,
    kind: &str,
    example: &str,
    check: fn(&str, &str) -> Result<(), ConfigError>,
) -> Result<crate::config::SecretString, ConfigError> {
    let base = table.base;
    let url_keys = crate::config::SecretKeys {
        inline: "url",
        env_var: "url_env",
        file: "url_file",
        required: true,
    };
    let sources = crate::config::SecretSources {
        inline: keys.take(base, "url")?,
        env_var: keys.take(base, "url_env")?,
        file: keys.take(base, "url_file")?,
    };
    match crate::config::resolve_secret_value(base, &url_keys, sources, table.env)? {
        Some((value, key)) => {
            check(&value, &key)?;
            Ok(crate::config::SecretString::new(value))
        }
        None => Err(invalid(
            format!("{base}.url"),
            format!(
                "is required for kind = \"{kind}\": set exactly one of url, url_env, url_file \
                 (a URL such as `{example}`)"
            ),
        )),
    }
}

/// The commented-out `[[sinks]]` table of `kind` in `config.example.toml`, uncommented (the
/// first `#` of each line and the space after it removed): from the `# [[sinks]]` line before
/// its `# kind = "..."` line up to the next blank line or commented-out table. Each kind's
/// tests parse their example with it.
#[cfg(test)]
pub(crate) fn example_block(kind: &str) -> String {
    let example = include_str!("../../config.example.toml");
    let lines: Vec<&str> = example.lines().collect();
    let kind_line = format!("# kind = \"{kind}\"");
    let at = lines
        .iter()
        .position(|line| *line == kind_line)
        .unwrap_or_else(|| panic!("config.example.toml has no commented-out sink of kind {kind}"));
    let start = (0..at)
        .rev()
        .find(|&i| lines[i] == "# [[sinks]]")
        .unwrap_or_else(|| panic!("the {kind} example has no `# [[sinks]]` line"));
    let mut block = String::new();
    for (i, line) in lines.iter().enumerate().skip(start) {
        if !line.starts_with('#') || (i > start && *line == "# [[sinks]]") {
            break;
        }
        let line = &line[1..];
        block.push_str(line.strip_prefix(' ').unwrap_or(line));
        block.push('\n');
    }
    block
}

/// `config.example.toml` up to its first commented-out sink: a whole config on its own.
#[cfg(test)]
pub(crate) fn example_head() -> &'static str {
    let example = include_str!("../../config.example.toml");
    let end = example
        .find("\n# [[sinks]]\n")
        .expect("the example has commented-out sinks");
    &example[..end + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_and_keys_are_unique_and_listed_once() {
        let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        assert_eq!(
            names,
            ["stdout", "http", "redis_stream", "nats", "rabbitmq"]
        );
        let keys: Vec<&str> = kind_keys().map(|k| k.name).collect();
        assert_eq!(
            keys,
            [
                "url",
                "timeout_secs",
                "concurrency",
                "secret",
                "secret_env",
                "secret_file",
                "url_env",
                "url_file",
                "stream",
                "max_len",
                "dedupe_ttl_secs",
                "ca_file",
                "subject",
                "token_env",
                "creds_file",
                "user",
                "password_env",
                "exchange",
                "declare",
                "routing_key"
            ]
        );
        for common in [
            "name",
            "kind",
            "events",
            "sources",
            "phone_number_ids",
            "retry",
        ] {
            assert!(kind_key(common).is_none(), "{common} is every kind's key");
        }
    }

    #[test]
    fn take_returns_the_value_once() {
        let mut keys = KindKeys::default();
        keys.insert("timeout_secs", toml::Value::Integer(5));
        assert!(keys.contains("timeout_secs"));
        assert_eq!(
            keys.take::<u64>("sinks[0]", "timeout_secs").unwrap(),
            Some(5)
        );
        assert_eq!(keys.take::<u64>("sinks[0]", "timeout_secs").unwrap(), None);
        keys.insert("url", toml::Value::Integer(5));
        let err = keys.take::<String>("sinks[0]", "url").unwrap_err();
        assert_eq!(err.key(), Some("sinks[0].url"));
    }
}
