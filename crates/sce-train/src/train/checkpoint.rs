//! Checkpoint files: Burn's model/optimizer/scheduler records written atomically, plus our own
//! JSON state, keyed by the global step so a mid-epoch stop can be saved too.

use std::path::{Path, PathBuf};

use burn::train::checkpoint::{
    Checkpoint, Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy,
};
use burn::train::metric::store::EventStoreClient;

/// Names of the record files of one checkpoint.
pub const RECORDS: [&str; 3] = ["model", "optim", "scheduler"];

pub fn record_path(dir: &Path, name: &str, step: usize) -> PathBuf {
    dir.join(format!("{name}-{step}.bpk"))
}

pub fn state_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("state-{step}.json"))
}

/// Writes `bytes` to `path` through a temporary file and a rename: readers see the old file or
/// the complete new one, never a partial write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let result = (|| {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Burn's file checkpointer, but atomic: each record is written to a temporary file and renamed.
pub struct AtomicCheckpointer {
    dir: PathBuf,
    name: &'static str,
}

impl AtomicCheckpointer {
    pub fn new(dir: &Path, name: &'static str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name,
        }
    }
}

impl<R: Checkpoint> Checkpointer<R> for AtomicCheckpointer {
    fn save(&self, step: usize, record: R) -> Result<(), CheckpointerError> {
        let bytes = record
            .checkpoint_into_bytes()
            .map_err(CheckpointerError::Record)?;
        write_atomic(&record_path(&self.dir, self.name, step), &bytes)
            .map_err(CheckpointerError::IOError)
    }

    fn restore(&self, step: usize) -> Result<R, CheckpointerError> {
        R::load(record_path(&self.dir, self.name, step))
    }

    fn delete(&self, step: usize) -> Result<(), CheckpointerError> {
        let path = record_path(&self.dir, self.name, step);
        if path.exists() {
            std::fs::remove_file(path).map_err(CheckpointerError::IOError)?;
        }
        Ok(())
    }
}

/// Save every checkpoint asked for; keep the newest `keep`.
pub struct KeepLast {
    keep: usize,
    saved: Vec<usize>,
}

impl KeepLast {
    pub fn new(keep: usize) -> Self {
        Self {
            keep: keep.max(1),
            saved: Vec::new(),
        }
    }

    /// Checkpoints already on disk (a resumed run), oldest first, count towards `keep`.
    pub fn seed(&mut self, existing: Vec<usize>) {
        self.saved = existing;
    }
}

impl KeepLast {
    /// Save `step`, delete what falls out of the window.
    fn plan(&mut self, step: usize) -> Vec<CheckpointingAction> {
        self.saved.push(step);
        let mut actions = vec![CheckpointingAction::Save];
        while self.saved.len() > self.keep {
            actions.push(CheckpointingAction::Delete(self.saved.remove(0)));
        }
        actions
    }
}

impl CheckpointingStrategy for KeepLast {
    fn checkpointing(&mut self, step: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        self.plan(step)
    }
}

/// Steps with a complete checkpoint (all records and the state file), newest last.
pub fn complete_steps(dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut steps: Vec<usize> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("state-")?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .filter(|&step| RECORDS.iter().all(|r| record_path(dir, r, step).is_file()))
        .collect();
    steps.sort_unstable();
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_sets_count_and_writes_are_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for step in [10, 20] {
            for r in RECORDS {
                write_atomic(&record_path(d, r, step), b"x").unwrap();
            }
        }
        write_atomic(&state_path(d, 10), b"{}").unwrap();
        // Step 20 has no state file yet; step 30 only a stray temporary file.
        std::fs::write(d.join("model-30.bpk.tmp-1"), b"partial").unwrap();
        assert_eq!(complete_steps(d), vec![10]);
        write_atomic(&state_path(d, 20), b"{}").unwrap();
        assert_eq!(complete_steps(d), vec![10, 20]);
    }

    #[test]
    fn keep_last_deletes_the_oldest() {
        let mut k = KeepLast::new(2);
        k.seed(vec![4]);
        assert_eq!(k.plan(8).len(), 1);
        let actions = k.plan(12);
        assert!(matches!(actions[1], CheckpointingAction::Delete(4)));
        assert!(matches!(k.plan(16)[1], CheckpointingAction::Delete(8)));
    }
}
