//! Checkpoint files: Burn's model/optimizer/scheduler records plus our own manifest
//! (`state-STEP.json`), keyed by the global step so a mid-epoch stop can be saved too.
//!
//! A checkpoint is complete only when its manifest exists, and the manifest is written last:
//! after every record has been written, synced and renamed into place. The manifest records
//! each record's length and CRC-32, so a truncated or damaged file is detected on load and
//! the previous intact checkpoint used instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{Context, anyhow};
use burn::train::checkpoint::{
    Checkpoint, Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy,
};
use burn::train::metric::store::EventStoreClient;
use serde::{Deserialize, Serialize};

use super::state::TrainState;
use crate::atomic_file::write_atomic;
use crate::config::TrainConfig;

/// Names of the record files every checkpoint has (Burn's learner records).
pub const RECORDS: [&str; 3] = ["model", "optim", "scheduler"];

/// Records a checkpoint may have besides, written by the run itself (the online probe's).
const OPTIONAL_RECORDS: [&str; 2] = super::probe::PROBE_RECORDS;

pub fn record_path(dir: &Path, name: &str, step: usize) -> PathBuf {
    dir.join(format!("{name}-{step}.bpk"))
}

pub fn state_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("state-{step}.json"))
}

/// Length and CRC-32 of a record file as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordInfo {
    pub bytes: u64,
    pub crc32: u32,
}

impl RecordInfo {
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        }
    }
}

/// The manifest of a checkpoint: where training stands, the records it consists of and the
/// configuration it was trained with (to refuse a resume under a different one).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub state: TrainState,
    pub records: BTreeMap<String, RecordInfo>,
    pub config: TrainConfig,
}

/// One record write: record name, step, and its length and checksum or why it failed.
type WriteReport = (String, usize, Result<RecordInfo, String>);

/// Outcomes of the record writes, reported by Burn's checkpointer threads. Burn writes records
/// asynchronously and reports failures only by interrupting training; this lets the run wait
/// for its records and see each one's result before it writes the manifest.
#[derive(Clone, Default)]
pub struct SaveLog {
    inner: Arc<(Mutex<Vec<WriteReport>>, Condvar)>,
}

impl SaveLog {
    fn report(&self, name: &str, step: usize, result: Result<RecordInfo, String>) {
        let (log, changed) = &*self.inner;
        log.lock().unwrap().push((name.to_string(), step, result));
        changed.notify_all();
    }

    /// Waits until every record of `step` is reported; their lengths and checksums, or the
    /// first failure.
    pub fn wait(&self, step: usize) -> anyhow::Result<BTreeMap<String, RecordInfo>> {
        let (log, changed) = &*self.inner;
        let mut log = log.lock().unwrap();
        while log.iter().filter(|(_, s, _)| *s == step).count() < RECORDS.len() {
            log = changed.wait(log).unwrap();
        }
        let mut records = BTreeMap::new();
        let mut first_error = None;
        log.retain(|(name, s, result)| {
            if *s != step {
                return true;
            }
            match result {
                Ok(info) => {
                    records.insert(name.clone(), *info);
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.clone());
                }
            }
            false
        });
        match first_error {
            Some(e) => Err(anyhow!("{e}")),
            None => Ok(records),
        }
    }
}

/// Burn's file checkpointer, but atomic (temporary file + rename + sync) and reporting each
/// write's outcome to a [`SaveLog`]. Deleting is left to the run, which deletes an old
/// checkpoint only after a newer one is verified.
pub struct AtomicCheckpointer {
    dir: PathBuf,
    name: &'static str,
    log: SaveLog,
}

impl AtomicCheckpointer {
    pub fn new(dir: &Path, name: &'static str, log: SaveLog) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name,
            log,
        }
    }
}

impl<R: Checkpoint> Checkpointer<R> for AtomicCheckpointer {
    fn save(&self, step: usize, record: R) -> Result<(), CheckpointerError> {
        let path = record_path(&self.dir, self.name, step);
        // A panic while serialising must not kill the writer thread (the run would wait for
        // its report forever): it becomes a failed save like any other.
        let bytes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            record.checkpoint_into_bytes()
        }));
        let result = match bytes {
            Ok(Ok(bytes)) => write_atomic(&path, &bytes)
                .map(|()| RecordInfo::of(&bytes))
                .map_err(|e| format!("cannot write {}: {e}", path.display())),
            Ok(Err(e)) => Err(format!("cannot serialise {}: {e}", path.display())),
            Err(_) => Err(format!("serialising {} panicked", path.display())),
        };
        self.log.report(self.name, step, result.clone());
        result
            .map(|_| ())
            .map_err(|e| CheckpointerError::IOError(std::io::Error::other(e)))
    }

    fn restore(&self, step: usize) -> Result<R, CheckpointerError> {
        R::load(record_path(&self.dir, self.name, step))
    }

    fn delete(&self, step: usize) -> Result<(), CheckpointerError> {
        remove_records(&self.dir, &[self.name], step).map_err(CheckpointerError::IOError)
    }
}

fn remove_records(dir: &Path, names: &[&str], step: usize) -> std::io::Result<()> {
    for name in names {
        match std::fs::remove_file(record_path(dir, name, step)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Deletes checkpoint `step`: its manifest first, so a half-deleted checkpoint never looks
/// complete.
pub fn delete_checkpoint(dir: &Path, step: usize) -> std::io::Result<()> {
    match std::fs::remove_file(state_path(dir, step)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    remove_records(dir, &RECORDS, step)?;
    remove_records(dir, &OPTIONAL_RECORDS, step)
}

/// Save every checkpoint the run asks for; the run itself deletes old ones once a newer one
/// is verified (Burn would delete them while the new one may still fail to write).
pub struct SaveWhenAsked;

impl CheckpointingStrategy for SaveWhenAsked {
    fn checkpointing(&mut self, _: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        vec![CheckpointingAction::Save]
    }
}

/// Steps with a manifest, oldest first (the newest may still turn out damaged: see
/// [`verify`]).
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
        .collect();
    steps.sort_unstable();
    steps
}

/// Reads the manifest of checkpoint `step` and checks every record against it (length and
/// CRC-32): an error says what is damaged.
pub fn verify(dir: &Path, step: usize) -> anyhow::Result<Manifest> {
    let path = state_path(dir, step);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a checkpoint manifest", path.display()))?;
    for name in RECORDS {
        anyhow::ensure!(
            manifest.records.contains_key(name),
            "{} lists no {name} record",
            path.display()
        );
    }
    for (name, expected) in &manifest.records {
        let file = record_path(dir, name, step);
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let actual = RecordInfo::of(&bytes);
        anyhow::ensure!(
            actual == *expected,
            "{} is damaged: {} bytes with CRC-32 {:08x}, the manifest says {} bytes with {:08x}",
            file.display(),
            actual.bytes,
            actual.crc32,
            expected.bytes,
            expected.crc32
        );
        if let Some(tensor) = first_non_finite(bytes)
            .with_context(|| format!("{} is not a Burn record", file.display()))?
        {
            anyhow::bail!(
                "{} holds NaN or infinite values in `{tensor}`",
                file.display()
            );
        }
    }
    Ok(manifest)
}

/// The name of the first floating-point tensor of a record (burnpack bytes) holding a NaN or
/// an infinity, read straight from the file's bytes (no model, no device).
pub fn first_non_finite(bytes: Vec<u8>) -> anyhow::Result<Option<String>> {
    use burn_pack::DType;
    let reader = burn_pack::Reader::from_bytes(burn_pack::Bytes::from_bytes_vec(bytes))?;
    for tensor in reader.into_tensors()? {
        let (name, dtype, _, _, bytes) = tensor.into_parts()?;
        // An IEEE value is not finite exactly when its exponent bits are all ones.
        let finite = match dtype {
            DType::F64 => all_words(&bytes, |w: [u8; 8]| f64::from_le_bytes(w).is_finite()),
            DType::F32 | DType::Flex32 => {
                all_words(&bytes, |w: [u8; 4]| f32::from_le_bytes(w).is_finite())
            }
            DType::F16 => all_words(&bytes, |w: [u8; 2]| {
                u16::from_le_bytes(w) & 0x7c00 != 0x7c00
            }),
            DType::BF16 => all_words(&bytes, |w: [u8; 2]| {
                u16::from_le_bytes(w) & 0x7f80 != 0x7f80
            }),
            _ => true,
        };
        if !finite {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Whether `finite` holds for every little-endian word of `bytes`.
fn all_words<const N: usize>(bytes: &[u8], finite: impl Fn([u8; N]) -> bool) -> bool {
    bytes
        .chunks_exact(N)
        .all(|w| finite(w.try_into().expect("chunks of N bytes")))
}

/// The newest checkpoint that verifies, with its step; damaged newer ones are reported through
/// `warn`. Nothing is changed on disk (evaluation reads runs that may be training).
pub fn newest_intact(dir: &Path, warn: &dyn Fn(String)) -> Option<(usize, Manifest)> {
    for step in complete_steps(dir).into_iter().rev() {
        match verify(dir, step) {
            Ok(manifest) => return Some((step, manifest)),
            Err(e) => warn(format!(
                "warning: the checkpoint at step {step} is damaged ({e:#}); using the previous one"
            )),
        }
    }
    None
}

/// Renames the manifests of checkpoints after `step` (damaged ones a resumed run does not
/// continue from) to `state-STEP.json.damaged`: they are kept for inspection but neither tried
/// again nor mistaken for the run's position. Only the process holding the run's lock may.
pub fn set_aside_after(dir: &Path, step: Option<usize>) -> std::io::Result<()> {
    for later in complete_steps(dir)
        .into_iter()
        .filter(|&s| step.is_none_or(|step| s > step))
    {
        let state = state_path(dir, later);
        let mut damaged = state.clone().into_os_string();
        damaged.push(".damaged");
        std::fs::rename(&state, &damaged)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(records: BTreeMap<String, RecordInfo>) -> Vec<u8> {
        let config = crate::config::load_config(&crate::config::ConfigSource {
            path: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml"),
            overrides: Vec::new(),
        })
        .unwrap();
        serde_json::to_vec(&Manifest {
            state: TrainState::default(),
            records,
            config,
        })
        .unwrap()
    }

    /// A record of one float tensor `weight` holding `values`, as Burn writes it.
    pub(crate) fn record_of(values: &[f32]) -> Vec<u8> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensor = burn_pack::Tensor::new(
            "layer.weight".into(),
            burn_pack::DType::F32,
            [values.len()],
            None,
            burn_pack::Bytes::from_bytes_vec(bytes),
        );
        burn_pack::Writer::new(vec![tensor])
            .into_bytes()
            .unwrap()
            .to_vec()
    }

    /// Writes a checkpoint as the run does: records through the checkpointer, then the manifest.
    fn save(dir: &Path, step: usize, log: &SaveLog) {
        save_with(dir, step, log, &[step as f32, 1.0]);
    }

    /// [`save`] with every record holding `values`.
    fn save_with(dir: &Path, step: usize, log: &SaveLog, values: &[f32]) {
        for name in RECORDS {
            let bytes = record_of(values);
            let path = record_path(dir, name, step);
            let result = write_atomic(&path, &bytes)
                .map(|()| RecordInfo::of(&bytes))
                .map_err(|e| e.to_string());
            log.report(name, step, result);
        }
        let records = log.wait(step).unwrap();
        write_atomic(&state_path(dir, step), &manifest(records)).unwrap();
    }

    #[test]
    fn a_manifest_makes_a_checkpoint_and_damage_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = SaveLog::default();
        for step in [10, 20, 30] {
            save(d, step, &log);
        }
        // Records of step 40 without a manifest, and a stray temporary file: not checkpoints.
        for name in RECORDS {
            write_atomic(&record_path(d, name, 40), b"x").unwrap();
        }
        std::fs::write(d.join("model-50.bpk.tmp-1"), b"partial").unwrap();
        assert_eq!(complete_steps(d), vec![10, 20, 30]);
        assert!(verify(d, 30).is_ok());

        // Step 30's optimizer record truncated, step 20's manifest broken: back to step 10.
        std::fs::write(record_path(d, "optim", 30), b"").unwrap();
        std::fs::write(state_path(d, 20), b"{\"state\":").unwrap();
        let warnings = Mutex::new(Vec::new());
        let (step, _) = newest_intact(d, &|w| warnings.lock().unwrap().push(w)).unwrap();
        assert_eq!(step, 10);
        let warnings = warnings.into_inner().unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("step 30") && warnings[0].contains("optim-30.bpk"));
        assert!(warnings[1].contains("step 20") && warnings[1].contains("manifest"));
        // Reading changes nothing; the writer sets the damaged ones aside.
        assert_eq!(complete_steps(d), vec![10, 20, 30]);
        set_aside_after(d, Some(step)).unwrap();
        assert_eq!(complete_steps(d), vec![10]);
        assert!(d.join("state-30.json.damaged").is_file());
        set_aside_after(d, None).unwrap();
        assert!(complete_steps(d).is_empty());
    }

    /// A record whose CRC matches but whose values are not finite is damaged: the previous
    /// checkpoint is used, and the warning names the file and the tensor.
    #[test]
    fn non_finite_values_make_a_checkpoint_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = SaveLog::default();
        save(d, 10, &log);
        save_with(d, 20, &log, &[1.0, f32::NAN]);
        save_with(d, 30, &log, &[f32::NEG_INFINITY]);
        let error = verify(d, 20).unwrap_err().to_string();
        assert!(
            error.contains("model-20.bpk")
                && error.contains("NaN or infinite values in `layer.weight`"),
            "{error}"
        );
        let warnings = Mutex::new(Vec::new());
        let (step, _) = newest_intact(d, &|w| warnings.lock().unwrap().push(w)).unwrap();
        assert_eq!(step, 10);
        assert_eq!(warnings.into_inner().unwrap().len(), 2);
        assert_eq!(
            first_non_finite(record_of(&[0.0, -f32::MAX, f32::MIN_POSITIVE])).unwrap(),
            None
        );
        assert!(first_non_finite(b"not a record".to_vec()).is_err());
    }

    #[test]
    fn a_failed_record_write_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = SaveLog::default();
        let missing = dir.path().join("no-such-dir");
        let checkpointer = AtomicCheckpointer::new(&missing, "model", log.clone());
        let record = burn::optim::lr_scheduler::LrSchedulerRecord::new();
        assert!(Checkpointer::save(&checkpointer, 7, record).is_err());
        log.report("optim", 7, Ok(RecordInfo::of(b"")));
        log.report("scheduler", 7, Ok(RecordInfo::of(b"")));
        let error = log.wait(7).unwrap_err().to_string();
        assert!(
            error.contains("model-7.bpk") && error.contains("No such file"),
            "{error}"
        );
    }

    #[test]
    fn deleting_removes_the_manifest_first_and_everything() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        save(d, 5, &SaveLog::default());
        delete_checkpoint(d, 5).unwrap();
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0);
        delete_checkpoint(d, 5).unwrap();
    }
}
