//! Whether a run's configuration may differ from the one its checkpoint was trained with.
//!
//! `--resume` reads the run's `config.toml`, which a user can edit. Keys that only change how
//! the run is monitored or fed may differ; any other change (batch size, dataset, model,
//! schedule length…) would silently continue a different experiment, so it is refused.

use serde_json::Value;

use crate::config::TrainConfig;
use crate::error::usage;

/// Keys (or whole sections, ending in `.`) that may change between sessions of one run.
const MAY_CHANGE: [&str; 7] = [
    "eval.",
    "report.",
    "run.checkpoint_every",
    "data.threads",
    "data.prefetch",
    "data.download",
    "data.skip_corrupt",
];

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn keys(config: &TrainConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let value = serde_json::to_value(config).expect("a configuration serialises");
    flatten("", &value, &mut out);
    out
}

/// Keys whose values differ between `saved` and `current` and may not: (key, saved, current).
pub fn breaking_changes(saved: &TrainConfig, current: &TrainConfig) -> Vec<(String, String)> {
    let before = keys(saved);
    let after = keys(current);
    let value_of = |list: &[(String, String)], key: &str| {
        list.iter()
            .find(|(k, _)| k == key)
            .map_or("(unset)".to_string(), |(_, v)| v.clone())
    };
    let mut all: Vec<&String> = before.iter().chain(&after).map(|(k, _)| k).collect();
    all.sort();
    all.dedup();
    all.into_iter()
        .filter(|key| !MAY_CHANGE.iter().any(|m| key.starts_with(m) || *key == m))
        .filter_map(|key| {
            let (was, now) = (value_of(&before, key), value_of(&after, key));
            (was != now).then(|| (key.clone(), format!("{was} → {now}")))
        })
        .collect()
}

/// Refuses to resume from a checkpoint trained under a configuration that differs in a key
/// that breaks continuity; the error names the keys and both values.
pub fn ensure_continuable(
    saved: &TrainConfig,
    current: &TrainConfig,
    config_file: &std::path::Path,
    step: usize,
) -> anyhow::Result<()> {
    let changes = breaking_changes(saved, current);
    if changes.is_empty() {
        return Ok(());
    }
    let list = changes
        .iter()
        .map(|(k, v)| format!("`{k}` ({v})"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(usage(format!(
        "{} changed since the checkpoint at step {step}: {list}; a resumed run must keep its \
         configuration (only eval.*, run.checkpoint_every and data.threads/prefetch/download/\
         skip_corrupt may change) — restore the values, start a new run, or pass --force to \
         continue anyway",
        config_file.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, load_config};

    fn tiny(overrides: &[(&str, &str)]) -> TrainConfig {
        load_config(&ConfigSource {
            path: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml"),
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn monitoring_may_change_the_experiment_may_not() {
        let saved = tiny(&[]);
        let harmless = tiny(&[
            ("eval.knn_k", "5"),
            ("data.threads", "1"),
            ("run.checkpoint_every", "2"),
        ]);
        assert!(breaking_changes(&saved, &harmless).is_empty());

        let changed = tiny(&[("run.batch_size", "64"), ("data.channels", "3")]);
        let changes = breaking_changes(&saved, &changed);
        let keys: Vec<&str> = changes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["data.channels", "run.batch_size"]);
        assert_eq!(changes[1].1, "128 → 64");
        let error = ensure_continuable(&saved, &changed, "run/config.toml".as_ref(), 8)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`run.batch_size` (128 → 64)") && error.contains("step 8"),
            "{error}"
        );
    }
}
