use std::path::PathBuf;

use anyhow::Context;

use super::TrainConfig;
use crate::error::usage;

/// Where a configuration comes from: a file (or the built-in quick start) plus overrides.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// `section.key=value` pairs, applied in order after the file.
    pub overrides: Vec<(String, String)>,
}

/// Splits `section.key=value`; the value is parsed as TOML (`0.5`, `true`, `[1, 2]`,
/// `"text"`) or taken as a plain string.
pub fn parse_override(text: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| usage(format!("--set `{text}`: expected section.key=value")))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(usage(format!(
            "--set `{text}`: `{key}` is not a dotted key"
        )));
    }
    Ok((key.to_string(), value.trim().to_string()))
}

fn override_value(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> anyhow::Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("non-empty key");
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| usage(format!("--set {key}: `{part}` is a value, not a section")))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A run shortened from the command line (`--epochs`, `--set run.epochs`) below the file's
/// warmup keeps the file's warmup *fraction*: the warmup is scaled by new/old epochs, added as
/// an override, and a one-line notice returned. A warmup set on the command line is left alone
/// (and validated as given).
pub fn fit_warmup_to_epochs(source: &mut ConfigSource) -> anyhow::Result<Option<String>> {
    let given = |key: &str| source.overrides.iter().rev().find(|(k, _)| k == key);
    let (Some((_, epochs)), None) = (given("run.epochs"), given("optim.warmup_epochs")) else {
        return Ok(None);
    };
    let Some(epochs) = override_value(epochs).as_integer().filter(|&e| e > 0) else {
        return Ok(None);
    };
    let Ok(text) = std::fs::read_to_string(&source.path) else {
        return Ok(None);
    };
    let Ok(table) = toml::from_str::<toml::Table>(&text) else {
        return Ok(None);
    };
    let number = |section: &str, key: &str| {
        let value = table.get(section)?.get(key)?;
        value
            .as_float()
            .or_else(|| value.as_integer().map(|i| i as f64))
    };
    let (Some(file_epochs), Some(warmup)) =
        (number("run", "epochs"), number("optim", "warmup_epochs"))
    else {
        return Ok(None);
    };
    let epochs = epochs as f64;
    if warmup < epochs || file_epochs <= 0.0 {
        return Ok(None);
    }
    let scaled = warmup * epochs / file_epochs;
    source
        .overrides
        .push(("optim.warmup_epochs".into(), format!("{scaled}")));
    Ok(Some(format!(
        "note: optim.warmup_epochs scaled from {warmup} to {scaled} for {epochs} of {file_epochs} \
         epochs (set it with --set optim.warmup_epochs=… to choose)"
    )))
}

/// Reads, overrides, deserialises and validates a configuration. Errors are usage errors
/// naming the file and the key.
pub fn load_config(source: &ConfigSource) -> anyhow::Result<TrainConfig> {
    let path = &source.path;
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!(" (line {})", line_of(&text, s.start)))
            .unwrap_or_default();
        usage(format!("{}{line}: {}", path.display(), e.message()))
    })?;
    for (key, value) in &source.overrides {
        set_path(&mut table, key, override_value(value))?;
    }
    let config: TrainConfig =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let from_override = source
                .overrides
                .iter()
                .any(|(k, _)| key.starts_with(k.as_str()) || k.starts_with(&key));
            let origin = if from_override {
                " (set on the command line)"
            } else {
                ""
            };
            usage(format!(
                "{}: `{key}`{origin}: {}",
                path.display(),
                e.inner().to_string().trim()
            ))
        })?;
    config
        .validate()
        .with_context(|| format!("invalid configuration {}", path.display()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shipped config with `--set` overrides.
    fn shipped(name: &str, overrides: &[(&str, &str)]) -> ConfigSource {
        ConfigSource {
            path: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../configs")
                .join(name),
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_shortened_run_keeps_its_warmup_fraction() {
        let source = |overrides: &[(&str, &str)]| shipped("folder.toml", overrides);
        // folder.toml: 5 warmup epochs of 100 (its own values are checked below).
        let mut short = source(&[("run.epochs", "2")]);
        let note = fit_warmup_to_epochs(&mut short).unwrap().unwrap();
        assert!(note.contains("optim.warmup_epochs"), "{note}");
        let config = load_config(&short).unwrap();
        let file = load_config(&source(&[])).unwrap();
        let expected = file.optim.warmup_epochs * 2.0 / file.run.epochs as f64;
        assert!((config.optim.warmup_epochs - expected).abs() < 1e-12);
        // Long enough: untouched. Given explicitly: still validated as given.
        let mut long = source(&[("run.epochs", "50")]);
        assert!(fit_warmup_to_epochs(&mut long).unwrap().is_none());
        let mut explicit = source(&[("run.epochs", "2"), ("optim.warmup_epochs", "5")]);
        assert!(fit_warmup_to_epochs(&mut explicit).unwrap().is_none());
        assert!(load_config(&explicit).is_err());
    }

    /// Every recipe shipped in configs/ parses with unknown keys refused and passes validation,
    /// so a user's first command never fails on the file itself.
    #[test]
    fn every_shipped_config_loads_and_validates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut checked = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let source = ConfigSource {
                    path: path.clone(),
                    overrides: Vec::new(),
                };
                load_config(&source).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        assert!(
            checked.iter().any(|name| name == "fashion-mnist-hour.toml"),
            "{checked:?}"
        );
    }

    /// SyncBatchNorm replaces the target's split batch norm (spec §2.5): asking for both is a
    /// configuration mistake, named.
    #[test]
    fn synchronised_batch_norm_refuses_split_batch_norm() {
        let source = |overrides: &[(&str, &str)]| shipped("tiny.toml", overrides);
        let error = load_config(&source(&[("model.sync_bn", "true")])).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("model.sync_bn") && message.contains("model.bn_splits = 1, not 8"),
            "{message}"
        );
        let both = [("model.sync_bn", "true"), ("model.bn_splits", "1")];
        assert!(load_config(&source(&both)).unwrap().model.sync_bn);
    }

    #[test]
    fn override_values_parse_as_toml_or_strings() {
        assert_eq!(override_value("0.5"), toml::Value::Float(0.5));
        assert_eq!(override_value("true"), toml::Value::Boolean(true));
        assert_eq!(override_value("sgd"), toml::Value::String("sgd".into()));
        assert_eq!(
            override_value("[1, 2]"),
            toml::Value::Array(vec![toml::Value::Integer(1), toml::Value::Integer(2)])
        );
        assert!(parse_override("novalue").is_err());
        assert!(parse_override("a..b=1").is_err());
        assert_eq!(
            parse_override(" run.epochs = 3 ").unwrap(),
            ("run.epochs".into(), "3".into())
        );
    }
}
