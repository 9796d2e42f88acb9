//! Data-parallel pretraining across processes under Open MPI (`--features mpi`; `cargo xtask
//! ci` installs Open MPI and runs these where it may). Two ranks on this machine train as one
//! process with two devices does (`--devices cpu,cpu`): the same shards, each replica's own
//! batch statistics, gradients averaged, every replica's keys enqueued in order.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_clean_failure, json_line, sce_train, stderr};

/// `mpirun -np N sce-train …` from the workspace root, two ranks sharing this machine's cores.
fn mpirun(ranks: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(ranks.to_string())
        .arg(env!("CARGO_BIN_EXE_sce-train"))
        .current_dir(common::root());
    cmd
}

fn tiny_args(data: &Path, output: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = ["pretrain", "--config", "configs/tiny.toml"]
        .iter()
        .map(Into::into)
        .collect();
    args.extend(["--data-dir".into(), data.into(), "--output".into()]);
    args.push(output.into());
    args.extend(
        [
            "--json",
            "--device",
            "cpu",
            "--set",
            "report.embedding_map=false",
        ]
        .map(Into::into),
    );
    args
}

/// The per-item losses burn-train logged for epoch 1 (one per replica and step in one process,
/// rank 0's only under MPI).
fn logged_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("train/epoch-1/Loss.log"))
        .unwrap()
        .lines()
        .filter_map(|line| line.split(',').next()?.parse().ok())
        .collect()
}

/// Column `name` of metrics.csv.
fn metric(run: &Path, name: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = header.iter().position(|h| *h == name).unwrap();
    lines
        .map(|l| l.split(',').nth(column).unwrap().parse().unwrap())
        .collect()
}

/// The queue's keys in the model record of checkpoint `step`.
fn queue_keys(run: &Path, step: usize) -> Vec<f32> {
    let file = run.join(format!("checkpoints/model-{step}.bpk"));
    let tensor = burn_pack::Reader::from_file(&file)
        .unwrap()
        .into_tensors()
        .unwrap()
        .into_iter()
        .find(|t| t.name == "queue.keys")
        .expect("the model record holds the queue");
    let (_, _, _, _, bytes) = tensor.into_parts().unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// Tolerance on the losses: the replicas' gradients are summed in another place (MPI's
/// reduction instead of Burn's accumulator), which moves the last bits after a few steps.
const LOSS_TOLERANCE: f64 = 1e-4;

#[test]
fn two_ranks_train_as_one_process_with_two_devices() {
    let Some(data) = common::data_dir("two_ranks_train_as_one_process_with_two_devices") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (single, ranked) = (dir.path().join("devices"), dir.path().join("ranks"));
    let out = sce_train()
        .args(tiny_args(&data, &single))
        .args(["--devices", "cpu,cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = mpirun(2).args(tiny_args(&data, &ranked)).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // One run directory, one report: rank 1 writes and prints nothing.
    let summary = json_line(&out);
    assert_eq!(
        common::stdout(&out).lines().count(),
        1,
        "one JSON line from rank 0"
    );
    assert_eq!(
        summary["steps"], 8,
        "1,024 images / (2 ranks × 128) × 2 epochs"
    );
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 2, "no run directory beside the two runs");
    assert!(stderr(&out).contains("× 2 MPI ranks (global batch 256)"));

    // Rank 0's loss at each of the first steps is one of the two devices' in one process
    // (burn-train logs a step's devices in the order they finish).
    let one_process = logged_losses(&single);
    let two_ranks = logged_losses(&ranked);
    for step in 0..4 {
        let a = two_ranks[step];
        let devices = &one_process[2 * step..2 * step + 2];
        assert!(
            devices.iter().any(|&b| relative(a, b) < LOSS_TOLERANCE),
            "step {step}: {a} vs {devices:?}"
        );
    }
    // The epochs' mean losses (over ranks, over devices) and similarities.
    for name in ["loss", "positive_similarity", "step", "lr"] {
        let (a, b) = (metric(&ranked, name), metric(&single, name));
        assert_eq!(a.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert!(relative(*x, *y) < LOSS_TOLERANCE, "{name}: {a:?} vs {b:?}");
        }
    }
    // The queue holds both replicas' keys, in the same order, after the first epoch.
    let (a, b) = (queue_keys(&ranked, 4), queue_keys(&single, 4));
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-3, "queue keys differ by {worst}");
}

/// The process with the given parent and the highest PID (mpirun's last rank started).
fn a_rank_of(mpirun: &Child) -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &mpirun.id().to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
}

/// A rank killed mid-run ends the whole job with a non-zero status in bounded time (never a
/// hang); the run resumes from its last checkpoint on as many ranks, and only on as many.
#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes() {
    let Some(data) = common::data_dir("a_killed_rank_ends_the_job_and_the_run_resumes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut job = mpirun(2)
        .args(tiny_args(&data, &run))
        .args(["--set", "run.epochs=6"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = run.join("checkpoints/state-4.json");
    let start = Instant::now();
    while !first.exists() {
        assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint");
        assert!(job.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    let victim = a_rank_of(&job).expect("mpirun's ranks are its children");
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the job hangs after a rank died"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "a killed rank fails the job");

    // One process cannot continue a two-rank run.
    let out = sce_train()
        .args(["pretrain", "--resume"])
        .arg(&run)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_clean_failure(&out, 2, &["trained on 2 process(es)", "mpirun -np 2"]);

    let out = mpirun(2)
        .args(["pretrain", "--json", "--resume"])
        .arg(&run)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming at epoch"));
    assert_eq!(json_line(&out)["steps"], 24, "6 epochs of 4 steps");
    assert_eq!(metric(&run, "step").len(), 6);
}
