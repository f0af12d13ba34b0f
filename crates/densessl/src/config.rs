//! Reading TOML configs strictly: unknown keys are errors naming key, file and line;
//! `--set key=value` overrides are applied on top and named when they are wrong.

use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// Parses a config from TOML text. `source_name` names the file in errors.
pub fn from_toml_str<T: DeserializeOwned>(text: &str, source_name: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| Error::Config {
        source_name: source_name.to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Reads a config file, then applies `key=value` overrides (dotted keys, TOML values;
/// a value that is not valid TOML is taken as a string).
pub fn load<T: DeserializeOwned>(path: Option<&Path>, overrides: &[String]) -> Result<T> {
    let (text, name) = match path {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?,
            path.display().to_string(),
        ),
        None => (String::new(), "<defaults>".to_string()),
    };
    // Validate the file alone first, so its errors carry the file's line numbers.
    let parsed: T = from_toml_str(&text, &name)?;
    if overrides.is_empty() {
        return Ok(parsed);
    }
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| Error::Config {
        source_name: name.clone(),
        message: e.to_string(),
    })?;
    for item in overrides {
        apply_override(&mut table, item)?;
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| Error::Config {
        source_name: format!("--set {}", overrides.join(" --set ")),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Like [`load`], with a preset TOML layer (`preset_name`, `preset`) under the file: values
/// come from the preset, then the file, then the overrides, tables merged key by key.
pub fn load_with_preset<T: DeserializeOwned>(
    preset: Option<(&str, &str)>,
    path: Option<&Path>,
    overrides: &[String],
) -> Result<T> {
    let Some((preset_name, preset_text)) = preset else { return load(path, overrides) };
    let mut table: toml::Table = toml::from_str(preset_text).map_err(|e| Error::Config {
        source_name: format!("protocol {preset_name}"),
        message: e.to_string(),
    })?;
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let name = path.display().to_string();
        // Validate the file alone first, so its errors carry the file's line numbers.
        let _: T = from_toml_str(&text, &name)?;
        let file: toml::Table =
            toml::from_str(&text).map_err(|e| Error::Config { source_name: name, message: e.to_string() })?;
        merge(&mut table, file);
    }
    for item in overrides {
        apply_override(&mut table, item)?;
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| Error::Config {
        source_name: format!("protocol {preset_name} + file + --set"),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Merges `top` into `base`: tables recursively, other values replaced.
pub fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Applies one `a.b.c=value` override to a TOML table.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let bad = |message: String| Error::Config { source_name: format!("--set {item}"), message };
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| bad("expected key=value, e.g. --set train.steps=200".into()))?;
    let value = parse_value(raw.trim());
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad(format!("empty component in key '{key}'")));
    }
    let mut current = table;
    for part in &parts[..parts.len() - 1] {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| bad(format!("'{part}' is a value, not a table")))?;
    }
    current.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Serializes a resolved config as TOML (for `config.toml` in a run directory).
pub fn to_toml<T: Serialize>(config: &T) -> Result<String> {
    toml::to_string_pretty(config).map_err(|e| Error::Config {
        source_name: "<resolved>".into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        steps: usize,
        #[serde(default)]
        name: String,
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        seed: u64,
        #[serde(default = "default_inner")]
        train: Inner,
    }

    fn default_inner() -> Inner {
        Inner { steps: 5, name: "x".into() }
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let err = from_toml_str::<Outer>("seed = 1\n\n[train]\nstpes = 3\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.toml"), "{err}");
        assert!(err.contains("stpes"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let err = from_toml_str::<Outer>("seed = \"one\"\n", "b.toml").unwrap_err().to_string();
        assert!(err.contains("seed") || err.contains("line 1"), "{err}");
    }

    #[test]
    fn overrides_apply_and_are_checked() {
        let dir = std::env::temp_dir().join(format!("densessl-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "seed = 1\n[train]\nsteps = 3\n").unwrap();
        let c: Outer =
            load(Some(&path), &["train.steps=10".into(), "train.name=abc".into()]).unwrap();
        assert_eq!(c, Outer { seed: 1, train: Inner { steps: 10, name: "abc".into() } });
        let err = load::<Outer>(Some(&path), &["train.nope=1".into()]).unwrap_err().to_string();
        assert!(err.contains("--set train.nope=1") && err.contains("nope"), "{err}");
        let err = load::<Outer>(Some(&path), &["novalue".into()]).unwrap_err().to_string();
        assert!(err.contains("key=value"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
