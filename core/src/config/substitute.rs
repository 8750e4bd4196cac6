//! `${env:NAME}` and `${file:PATH}` in the config's values, in the OpenTelemetry Collector's syntax, so that webhook
//! URLs and keys live in the environment or in secret files instead of in the TOML.
//!
//! Substitution works on the parsed document's string values, never on its text: a substituted value with a quote,
//! a newline or a `]` in it cannot change the document's structure, and keys are never substituted. What is
//! substituted is not looked at again (a secret containing `${` stays as it is). `$${` writes a literal `${`.
//! `${env:NAME:-default}` gives `default` when `NAME` is not set. A variable that is not set (without a default) or
//! not UTF-8, a file that cannot be read, is larger than [`MAX_FILE_BYTES`] or is not UTF-8, and any other `${...}`
//! stop start-up with an error naming the key and the variable or the file. A file's trailing line breaks are
//! dropped (`echo secret > file` writes one); a relative path is taken from the config file's directory.

use std::io::Read;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use crate::error::ConfigError;

/// The largest file `${file:...}` reads: secrets and URLs are far smaller, and a path to a large file by mistake
/// must not fill memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The most text all substitutions together may add: a file named many times over is read many times.
const MAX_TOTAL_BYTES: usize = 16 << 20;

/// Looks up an environment variable: `Ok(None)` when it is not set, `Err` when its value is not UTF-8.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Result<Option<String>, String>;

/// The process environment, as [`EnvLookup`].
pub fn process_env(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("environment variable {name} is not valid UTF-8")),
    }
}

/// Substitutes every string value of `document`, parsed from the file `origin`.
pub fn substitute_document(document: &mut DeTable<'_>, origin: &Path, env: EnvLookup<'_>) -> Result<(), ConfigError> {
    let mut state = State { base_dir: origin.parent().unwrap_or(Path::new("")), env, total: 0 };
    state.table(document, "").map_err(|(key, reason)| ConfigError::Substitution {
        path: origin.to_path_buf(),
        key,
        reason,
    })
}

struct State<'a> {
    /// Where relative `${file:...}` paths start.
    base_dir: &'a Path,
    env: EnvLookup<'a>,
    /// Bytes substituted so far.
    total: usize,
}

/// A failed substitution: the key and why.
type Failure = (String, String);

/// `key` as TOML writes it: bare when it can be, quoted otherwise.
fn key_name(key: &str) -> String {
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

impl State<'_> {
    fn table(&mut self, table: &mut DeTable<'_>, prefix: &str) -> Result<(), Failure> {
        for (key, value) in table.iter_mut() {
            let name = key_name(key.get_ref());
            let path = if prefix.is_empty() { name } else { format!("{prefix}.{name}") };
            self.value(value.get_mut(), &path)?;
        }
        Ok(())
    }

    fn value(&mut self, value: &mut DeValue<'_>, path: &str) -> Result<(), Failure> {
        match value {
            DeValue::String(text) => {
                if let Some(expanded) = self.expand(text).map_err(|reason| (path.to_string(), reason))? {
                    *text = expanded.into();
                }
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.value(item.get_mut(), &format!("{path}[{i}]"))?;
                }
            }
            DeValue::Table(table) => self.table(table, path)?,
            DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {}
        }
        Ok(())
    }

    /// `text` with its substitutions made; `None` when it has none.
    fn expand(&mut self, text: &str) -> Result<Option<String>, String> {
        if !text.contains("${") {
            return Ok(None);
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find("${") {
            // `$${` is a literal `${`.
            if rest[..at].ends_with('$') {
                out.push_str(&rest[..at - 1]);
                out.push_str("${");
                rest = &rest[at + 2..];
                continue;
            }
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!("{rest:?} opens ${{ without a closing }}; write $${{ for a literal ${{"));
            };
            let reference = &after[..end];
            let value = self.resolve(reference)?;
            self.total = self.total.saturating_add(value.len());
            if self.total > MAX_TOTAL_BYTES {
                return Err(format!("substitutions add more than {} MiB to the config", MAX_TOTAL_BYTES >> 20));
            }
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(Some(out))
    }

    /// The text `${reference}` stands for.
    fn resolve(&self, reference: &str) -> Result<String, String> {
        let unknown = || {
            format!(
                "unknown substitution ${{{reference}}}: tailscope substitutes ${{env:NAME}}, ${{env:NAME:-default}} \
                 and ${{file:PATH}}; write $${{ for a literal ${{"
            )
        };
        match reference.split_once(':') {
            Some(("env", variable)) => {
                let (name, default) = match variable.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (variable, None),
                };
                let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(format!("${{env:{variable}}}: {name:?} is not an environment variable name"));
                }
                match ((self.env)(name)?, default) {
                    (Some(value), _) => Ok(value),
                    (None, Some(default)) => Ok(default.to_string()),
                    (None, None) => Err(format!(
                        "environment variable {name} is not set (${{env:{name}}}; ${{env:{name}:-default}} gives a \
                         default)"
                    )),
                }
            }
            Some(("file", path)) if !path.is_empty() => self.read_file(path),
            _ => Err(unknown()),
        }
    }

    /// A secret file's text, without its trailing line breaks.
    fn read_file(&self, path: &str) -> Result<String, String> {
        let resolved = self.base_dir.join(path);
        let cannot = |e: std::io::Error| format!("cannot read {} (${{file:{path}}}): {e}", resolved.display());
        let mut bytes = Vec::new();
        std::fs::File::open(&resolved)
            .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(cannot)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(format!(
                "{} (${{file:{path}}}) is larger than {} MiB, the most a substituted file may hold",
                resolved.display(),
                MAX_FILE_BYTES >> 20
            ));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{} (${{file:{path}}}) is not UTF-8 text", resolved.display()))?;
        Ok(text.trim_end_matches(['\n', '\r']).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Result<Option<String>, String> {
        match name {
            "HOOK" => Ok(Some("https://hooks.example.com/T0/B0/secret\"quoted\"".into())),
            "EMPTY" => Ok(Some(String::new())),
            "TRICKY" => Ok(Some("${env:HOOK}".into())),
            "BINARY" => Err("environment variable BINARY is not valid UTF-8".into()),
            _ => Ok(None),
        }
    }

    /// `toml` with its substitutions made, as `(key, value)` of every string; or the error's text.
    fn substituted(toml: &str, origin: &Path) -> Result<toml::Table, String> {
        let mut document = DeTable::parse(toml).map_err(|e| e.to_string())?;
        substitute_document(document.get_mut(), origin, &env).map_err(|e| e.to_string())?;
        let document: toml::Table =
            serde::Deserialize::deserialize(toml::de::Deserializer::from(document)).map_err(|e| e.to_string())?;
        Ok(document)
    }

    #[test]
    fn values_come_from_the_environment_and_files_and_stay_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "s3cr3t\r\n\n").unwrap();
        let origin = dir.path().join("tailscope.toml");
        let toml = "a = \"${env:HOOK}\"\nb = \"x-${env:EMPTY}-${file:key}-${env:UNSET:-fallback}\"\n\
                    c = \"$${env:HOOK} costs $5, $$ stays\"\nd = \"${env:TRICKY}\"\n\
                    [t]\nlist = [\"${file:key}\", 1]\n\"odd key\" = { k = \"${env:HOOK}\" }\n";
        let doc = substituted(toml, &origin).unwrap();
        assert_eq!(doc["a"].as_str(), Some("https://hooks.example.com/T0/B0/secret\"quoted\""));
        assert_eq!(doc["b"].as_str(), Some("x--s3cr3t-fallback"));
        assert_eq!(doc["c"].as_str(), Some("${env:HOOK} costs $5, $$ stays"));
        assert_eq!(doc["d"].as_str(), Some("${env:HOOK}"), "substituted text is not substituted again");
        assert_eq!(doc["t"]["list"][0].as_str(), Some("s3cr3t"));
        assert_eq!(doc["t"]["odd key"]["k"].as_str(), Some("https://hooks.example.com/T0/B0/secret\"quoted\""));
        // An absolute path is taken as it is.
        let absolute = format!("k = \"${{file:{}}}\"\n", dir.path().join("key").display());
        assert_eq!(substituted(&absolute, Path::new("elsewhere/t.toml")).unwrap()["k"].as_str(), Some("s3cr3t"));
    }

    #[test]
    fn what_cannot_be_substituted_is_refused_naming_the_key_and_the_source() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        std::fs::write(dir.path().join("latin1"), [0xe9u8]).unwrap();
        let origin = dir.path().join("tailscope.toml");
        for (toml, says) in [
            ("a = \"${env:UNSET}\"\n", &["a", "UNSET", "not set"][..]),
            ("[s]\nlist = [\"ok\", \"${env:BINARY}\"]\n", &["s.list[1]", "BINARY", "UTF-8"]),
            ("[[b]]\nname = \"${file:missing}\"\n", &["b[0].name", "missing"]),
            ("k = \"${file:big}\"\n", &["k", "big", "1 MiB"]),
            ("k = \"${file:latin1}\"\n", &["k", "latin1", "UTF-8"]),
            ("k = \"${vault:x}\"\n", &["k", "vault", "$${"]),
            ("k = \"${HOME}\"\n", &["k", "HOME", "env:NAME"]),
            ("k = \"${file:}\"\n", &["k", "file"]),
            ("k = \"${env:no-dashes}\"\n", &["k", "no-dashes"]),
            ("k = \"${env:HOOK\"\n", &["k", "closing"]),
        ] {
            let err = substituted(toml, &origin).expect_err(toml);
            for word in says {
                assert!(err.contains(word), "{toml}: {word:?} is not named: {err}");
            }
            assert!(err.contains("tailscope.toml"), "{toml}: the file is named: {err}");
        }
        // Keys are never substituted, and text without `${` is left alone.
        let doc = substituted("\"${env:HOOK}\" = \"$ {x} $$\"\n", &origin).unwrap();
        assert_eq!(doc["${env:HOOK}"].as_str(), Some("$ {x} $$"));
    }
}
