//! Unreadable images under `data.skip_corrupt`: whether they stop the run or are skipped, and
//! which were skipped — each one reported once as it happens, all listed at the end.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::DataError;

/// Called with one line per newly skipped image.
pub type Warn = Box<dyn Fn(&str) + Send + Sync>;

/// The policy for unreadable images and the record of those skipped, shared by the training
/// loader and every evaluation of a run.
pub struct SkipLog {
    enabled: bool,
    skipped: Mutex<BTreeMap<String, String>>,
    warn: Warn,
}

impl std::fmt::Debug for SkipLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkipLog")
            .field("enabled", &self.enabled)
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl SkipLog {
    /// Skip unreadable images (when `enabled`), telling `warn` about each the first time.
    pub fn new(enabled: bool, warn: Warn) -> Self {
        Self {
            enabled,
            skipped: Mutex::new(BTreeMap::new()),
            warn,
        }
    }

    /// Every unreadable image is an error.
    pub fn strict() -> Self {
        Self::new(false, Box::new(|_| {}))
    }

    /// Whether `error` (reading image `name`) may be skipped; records and reports it if so.
    pub fn skip(&self, name: &str, error: &DataError) -> bool {
        if !self.enabled {
            return false;
        }
        let new = self
            .skipped
            .lock()
            .unwrap()
            .insert(name.to_string(), error.to_string())
            .is_none();
        if new {
            (self.warn)(&format!("warning: skipped unreadable image: {error}"));
        }
        true
    }

    /// The images skipped so far (name → why), sorted by name.
    pub fn skipped(&self) -> Vec<(String, String)> {
        self.skipped
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn each_image_is_reported_once_and_strict_skips_nothing() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = seen.clone();
        let log = SkipLog::new(true, Box::new(move |w| sink.lock().unwrap().push(w.into())));
        let error = DataError::corrupt(std::path::Path::new("a.jpg"), "bad");
        assert!(log.skip("a.jpg", &error));
        assert!(log.skip("a.jpg", &error));
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(log.skipped().len(), 1);
        assert!(seen.lock().unwrap()[0].contains("a.jpg"));
        let strict = SkipLog::strict();
        assert!(!strict.skip("a.jpg", &error));
        assert!(strict.skipped().is_empty());
    }
}
