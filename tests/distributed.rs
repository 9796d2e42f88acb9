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

/// The float tensors of the model record of checkpoint `step` whose names pass `keep`.
fn record_tensors(run: &Path, step: usize, keep: impl Fn(&str) -> bool) -> Vec<(String, Vec<f32>)> {
    let file = run.join(format!("checkpoints/model-{step}.bpk"));
    burn_pack::Reader::from_file(&file)
        .unwrap()
        .into_tensors()
        .unwrap()
        .into_iter()
        .filter(|t| keep(&t.name))
        .map(|t| {
            let name = t.name.clone();
            let (_, _, _, _, bytes) = t.into_parts().unwrap();
            let values = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect()
}

/// The queues of two runs at checkpoint `step` hold the same keys in the same order.
fn assert_same_queue(a: &Path, b: &Path, step: usize) {
    let queue = |run: &Path| {
        let mut tensors = record_tensors(run, step, |name| name == "queue.keys");
        tensors.pop().expect("the model record holds the queue").1
    };
    let (a, b) = (queue(a), queue(b));
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-3, "queue keys differ by {worst}");
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
    assert_same_queue(&ranked, &single, 4);
}

/// With SyncBatchNorm, two ranks of 128 images train as one device with the global batch of
/// 256: every batch norm sees the statistics of both ranks' images. Without it they do not
/// (per-rank statistics move the first loss in the third digit).
#[test]
fn synchronised_batch_norm_trains_two_ranks_as_one_device_with_the_global_batch() {
    let Some(data) = common::data_dir(
        "synchronised_batch_norm_trains_two_ranks_as_one_device_with_the_global_batch",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (single, ranked) = (dir.path().join("one"), dir.path().join("ranks"));
    // One step an epoch; the first step's learning rate is 0 (warm-up), so the first two
    // steps run the initial weights.
    let sync = [
        "--set",
        "model.bn_splits=1",
        "--set",
        "model.sync_bn=true",
        "--set",
        "data.limit_train=256",
        "--set",
        "run.epochs=3",
        "--set",
        "optim.warmup_epochs=1",
    ];
    let out = sce_train()
        .args(tiny_args(&data, &single))
        .args(sync)
        .args(["--set", "run.batch_size=256"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = mpirun(2)
        .args(tiny_args(&data, &ranked))
        .args(sync)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_line(&out)["steps"], 3);

    // The forward passes of the first two steps (the second with the first step's keys in the
    // queue) are the full batch's, to float rounding: losses, similarities, the running
    // statistics of every batch norm (both trunks, the projector) and the queue after them.
    for name in ["loss", "positive_similarity"] {
        let (a, b) = (metric(&ranked, name), metric(&single, name));
        for (x, y) in a.iter().zip(&b).take(2) {
            assert!(relative(*x, *y) < 1e-5, "{name}: {a:?} vs {b:?}");
        }
    }
    let running = |run: &Path| record_tensors(run, 2, |name| name.contains("running_"));
    let (a, b) = (running(&ranked), running(&single));
    assert!(a.len() > 20, "{} batch-norm buffers", a.len());
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        for (u, v) in x.iter().zip(y) {
            assert!(
                (u - v).abs() <= 1e-5 * v.abs().max(1.0),
                "{name}: {u} (2 ranks) vs {v} (one device)"
            );
        }
    }
    assert_same_queue(&ranked, &single, 2);

    // The third step follows one update. The two sum the batch norms' gradients in different
    // orders, and this small network's early layers amplify rounding (two batch-norm
    // implementations of one device differ by 1e-2 in their updates there), so the loss agrees
    // to 1e-3; the backward pass itself is checked exactly in sce-ops' tests/ranks.rs.
    let (a, b) = (metric(&ranked, "loss"), metric(&single, "loss"));
    assert!(
        relative(a[2], b[2]) < 1e-3,
        "loss after one update: {a:?} vs {b:?}"
    );
}

/// The processes mpirun started (its children): the ranks.
fn ranks_of(mpirun: &Child) -> Vec<u32> {
    let Ok(out) = Command::new("pgrep")
        .args(["-P", &mpirun.id().to_string()])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether process `pid` still runs (a zombie has ended).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
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
    let ranks = ranks_of(&job);
    let victim = *ranks.iter().max().expect("mpirun's ranks are its children");
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
    // mpirun may return before the other rank has gone: it must go, in bounded time.
    while ranks.iter().any(|&pid| running(pid)) {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "a rank outlives the job: {ranks:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

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
