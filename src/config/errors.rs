//! Load errors that name the setting, where its value came from (the config file, an
//! environment variable, a flag) and, for a misspelled key, the closest valid one.

use std::{fmt, path::Path};

use figment::{
    Figment, Metadata, Profile, Provider, Source,
    error::{Actual, Kind},
    providers::{Format as _, Serialized, Toml},
    value::{Dict, Map, Value},
};

use super::{DEFAULT_TOML, ENV_PREFIX};

/// The metadata name of values from environment variables (the source names which one).
const FROM_ENV: &str = "environment variable";

/// One value from outside the files: an environment variable or a flag, labelled with
/// where it came from, so an error about it can say so.
pub(super) struct Setting {
    key: String,
    value: Value,
    /// [`FROM_ENV`] or "flag".
    kind: &'static str,
    /// The variable's or the flag's name.
    name: String,
}

impl Setting {
    /// `key` (`section.key`) set to `value` by the environment variable `name`.
    pub(super) fn env(key: &str, value: Value, name: &str) -> Self {
        Self {
            key: key.to_owned(),
            value,
            kind: FROM_ENV,
            name: name.to_owned(),
        }
    }

    /// `key` set to `value` by the command-line flag `flag` (`--listen`).
    pub(super) fn flag(key: &str, value: Value, flag: &str) -> Self {
        Self {
            key: key.to_owned(),
            value,
            kind: "flag",
            name: flag.to_owned(),
        }
    }
}

impl Provider for Setting {
    fn metadata(&self) -> Metadata {
        Metadata::from(
            self.kind,
            Source::Custom(format!("{} {}", self.kind, self.name)),
        )
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::global(&self.key, &self.value).data()
    }
}

/// An invalid value of a known setting, found after extraction (a range or a rule between
/// settings); [`with_origin`] adds where the value came from.
#[derive(Debug)]
pub(super) struct InvalidSetting {
    pub(super) key: &'static str,
    pub(super) message: String,
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidSetting {}

/// Where the value at `key` came from, as a phrase ("environment variable X", "config
/// file F"); `None` for the built-in defaults.
fn origin(figment: &Figment, key: &str, file: Option<&Path>) -> Option<String> {
    describe_source(figment.find_metadata(key)?, file)
}

fn describe_source(metadata: &Metadata, file: Option<&Path>) -> Option<String> {
    match metadata.source.as_ref()? {
        // The path as the user gave it (figment's is resolved).
        Source::File(found) => Some(format!(
            "config file {}",
            file.unwrap_or(found.as_path()).display()
        )),
        Source::Custom(origin) => Some(origin.clone()),
        // The built-in defaults (`Toml::string`).
        _ => None,
    }
}

/// `error` with the origin of its setting's value appended, when it is an
/// [`InvalidSetting`] whose value did not come from the defaults.
pub(super) fn with_origin(
    error: anyhow::Error,
    figment: &Figment,
    file: Option<&Path>,
) -> anyhow::Error {
    let Some(invalid) = error.downcast_ref::<InvalidSetting>() else {
        return error;
    };
    match origin(figment, invalid.key, file) {
        Some(from) => anyhow::anyhow!("{invalid} (from {from})"),
        None => error,
    }
}

/// The environment variable that sets `key` (`section.key` → `SWITCHYARD_SECTION__KEY`).
fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// The settings and sections there are: every key of the built-in defaults, which list
/// them all (a unit test holds them to [`super::Config`]).
struct Known {
    /// `section.key` and top-level `key`s.
    settings: Vec<String>,
    /// `section`s.
    sections: Vec<String>,
}

impl Known {
    fn get() -> Self {
        let defaults: Dict = Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("the built-in defaults parse");
        let mut known = Self {
            settings: Vec::new(),
            sections: Vec::new(),
        };
        for (name, value) in defaults {
            match value {
                Value::Dict(_, keys) => {
                    known
                        .settings
                        .extend(keys.into_keys().map(|k| format!("{name}.{k}")));
                    known.sections.push(name);
                }
                _ => known.settings.push(name),
            }
        }
        known
    }

    /// The valid setting `key` most likely meant: the closest by edit distance (within
    /// about one typo per four characters), else one with the same last part in another
    /// section (`limits.max_subscriptions` → `websocket.max_subscriptions`), else a
    /// section's first key when `key` names the section.
    fn closest(&self, key: &str) -> Option<&str> {
        let most = 2.max(key.len() / 4);
        let by_spelling = self
            .settings
            .iter()
            .chain(&self.sections)
            .map(|s| (edit_distance(key, s), s))
            .filter(|(d, _)| *d <= most)
            .min_by_key(|(d, _)| *d)
            .map(|(_, s)| s.as_str());
        let last = key.rsplit('.').next().unwrap_or(key);
        by_spelling
            .or_else(|| {
                self.settings
                    .iter()
                    .find(|s| s.rsplit('.').next() == Some(last))
                    .map(String::as_str)
            })
            .or_else(|| self.first_in(key))
    }

    /// The first setting of `section`, if it is one.
    fn first_in(&self, section: &str) -> Option<&str> {
        let prefix = format!("{section}.");
        self.settings
            .iter()
            .find(|s| s.starts_with(&prefix))
            .map(String::as_str)
    }
}

/// Refuses a setting that does not exist, naming it, where it came from, and the closest
/// valid one. Run before extraction, whose own error would name only the unknown part
/// (`histroy`, not `histroy.size`) with figment's internals (a `global.` profile, a
/// source location).
///
/// # Errors
/// The first unknown setting, in key order.
pub(super) fn check_known(figment: &Figment, file: Option<&Path>) -> anyhow::Result<()> {
    let merged: Dict = figment.extract().map_err(|e| describe(e, file))?;
    let known = Known::get();
    let mut unknown = Vec::new();
    collect_unknown(&known, "", &merged, &mut unknown);
    let Some((key, is_section)) = unknown.into_iter().next() else {
        return Ok(());
    };
    let from = origin(figment, &key, file).unwrap_or_else(|| "the defaults".to_owned());
    let from_env = figment
        .find_metadata(&key)
        .is_some_and(|m| m.name == FROM_ENV);
    let env = |key: &str| {
        if from_env {
            format!(" ({})", env_name(key))
        } else {
            String::new()
        }
    };
    if is_section {
        let example = known.first_in(&key).unwrap_or_default();
        anyhow::bail!(
            "`{key}` is a section, not a setting (from {from}); set its settings, such as `{example}`{}",
            env(example)
        );
    }
    let what = format!("unknown setting `{key}` from {from}");
    let hint = match known.closest(&key) {
        Some(meant) if known.sections.iter().any(|s| s == meant) => {
            format!("; did you mean the section `{meant}`?")
        }
        Some(meant) => format!("; did you mean `{meant}`{}?", env(meant)),
        None => "; `switchyard --help` lists every setting".to_owned(),
    };
    anyhow::bail!("{what}{hint}")
}

/// Adds to `out` each leaf under `prefix` in `dict` that is no setting: (its key, whether
/// it names a section given a value).
fn collect_unknown(known: &Known, prefix: &str, dict: &Dict, out: &mut Vec<(String, bool)>) {
    for (name, value) in dict {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if known.settings.contains(&key) {
            continue; // its type is extraction's to check
        }
        let is_section = known.sections.contains(&key);
        match value {
            Value::Dict(_, inner) if !inner.is_empty() => collect_unknown(known, &key, inner, out),
            Value::Dict(..) if is_section => {}
            _ => out.push((key, is_section)),
        }
    }
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of
/// two neighbours each cost 1 (`histroy` is one typo from `history`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

/// Figment's extraction error as one readable line per problem: the setting, where its
/// value came from, what was expected and what was found.
pub(super) fn describe(error: figment::Error, file: Option<&Path>) -> anyhow::Error {
    let lines: Vec<String> = error.into_iter().map(|e| describe_one(&e, file)).collect();
    anyhow::anyhow!(lines.join("; "))
}

fn describe_one(error: &figment::Error, file: Option<&Path>) -> String {
    let key = error.path.join(".");
    let from = error
        .metadata
        .as_ref()
        .and_then(|m| describe_source(m, file))
        .map(|from| format!(" from {from}"))
        .unwrap_or_default();
    let problem = match &error.kind {
        Kind::InvalidType(found, expected) | Kind::InvalidValue(found, expected) => {
            format!(
                "expected {}, found {}",
                expected_text(expected),
                found_text(found)
            )
        }
        Kind::UnknownVariant(found, expected) => format!(
            "expected one of {}, found {found:?}",
            expected
                .iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string().trim_end().to_owned(),
    };
    if key.is_empty() {
        // Not about one setting: the file itself (a TOML syntax error).
        format!("{}: {problem}", from.trim_start_matches(" from "))
    } else {
        format!("invalid value for `{key}`{from}: {problem}")
    }
}

/// serde's name of an expected type, in the words of the documentation.
fn expected_text(expected: &str) -> &str {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "path string" => "text",
        s if s.starts_with("struct ") => "a section of settings",
        other => other,
    }
}

fn found_text(found: &Actual) -> String {
    match found {
        Actual::Str(s) => format!("{s:?}"),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(n) => n.to_string(),
        Actual::Bool(b) => b.to_string(),
        Actual::Seq => "a list".to_owned(),
        Actual::Map => "a section".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_typo_is_one_edit() {
        assert_eq!(edit_distance("history", "history"), 0);
        assert_eq!(edit_distance("histroy", "history"), 1);
        assert_eq!(edit_distance("sise", "size"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn the_closest_setting_is_suggested() {
        let known = Known::get();
        assert_eq!(known.closest("histroy.size"), Some("history.size"));
        assert_eq!(known.closest("auth.api_key"), Some("auth.api_keys"));
        assert_eq!(known.closest("datadir"), Some("data_dir"));
        assert_eq!(
            known.closest("limits.max_subscription_per_ip"),
            Some("limits.max_subscriptions_per_ip")
        );
        assert!(
            known
                .first_in("history")
                .is_some_and(|k| k.starts_with("history.")),
            "{:?}",
            known.first_in("history")
        );
        assert_eq!(known.closest("histroy"), Some("history"), "a section");
        assert_eq!(known.closest("something_else_entirely"), None);
    }

    #[test]
    fn the_defaults_list_every_setting() {
        let shown = toml::to_string(&super::super::Config::default()).unwrap();
        let mut from_struct = Vec::new();
        let dict: Dict = Figment::from(Toml::string(&shown)).extract().unwrap();
        for (name, value) in dict {
            match value {
                Value::Dict(_, keys) => {
                    from_struct.extend(keys.into_keys().map(|k| format!("{name}.{k}")));
                }
                _ => from_struct.push(name),
            }
        }
        let mut known = Known::get().settings;
        known.sort();
        from_struct.sort();
        assert_eq!(known, from_struct);
    }

    #[test]
    fn env_names_follow_the_documented_rule() {
        assert_eq!(env_name("history.size"), "SWITCHYARD_HISTORY__SIZE");
        assert_eq!(env_name("data_dir"), "SWITCHYARD_DATA_DIR");
    }
}
