//! Pretraining end to end on real data (`configs/tiny.toml`, 1,024 Fashion-MNIST images):
//! the run directory, exact resumption after SIGKILL and after Ctrl-C, the non-finite-loss stop.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{assert_clean_failure, json_line, sce_train, stderr};

fn tiny(data: &Path, output: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = sce_train();
    cmd.args(["pretrain", "--config", "configs/tiny.toml", "--data-dir"])
        .arg(data)
        .arg("--output")
        .arg(output)
        .arg("--json")
        .args(extra);
    cmd
}

/// The hour recipe of docs/results.md as a user starts it, cut to one step on one batch of
/// images with a small kNN: the file validates, builds its network and augmentation, trains and
/// evaluates. Its accuracy is measured in docs/results.md, never by a test.
#[test]
fn hour_recipe_trains_one_step() {
    let Some(data) = common::data_dir("hour_recipe_trains_one_step") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = "configs/fashion-mnist-hour.toml";
    let text = std::fs::read_to_string(common::root().join(config)).unwrap();
    let table: toml::Table = text.parse().unwrap();
    let batch = table["run"]["batch_size"].as_integer().unwrap().to_string();
    let out = sce_train()
        .args(["pretrain", "--config", config, "--data-dir"])
        .arg(&data)
        .arg("--output")
        .arg(&run)
        .args(["--json", "--epochs", "1", "--limit-train", &batch])
        .args([
            "--set",
            "eval.bank_limit=500",
            "--set",
            "eval.test_limit=100",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_line(&out);
    assert_eq!(report["steps"], 1, "{report}");
    assert!(report["knn_top1"].as_f64().unwrap() > 10.0, "{report}");
}

/// `pretrain --resume RUN` with the real data.
fn resume(data: &Path, run: &Path) -> std::process::Output {
    sce_train()
        .args(["pretrain", "--json", "--resume"])
        .arg(run)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

fn summary(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Waits (at most a minute) until `path` exists while `child` runs.
fn wait_for(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before {}",
            path.display()
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The step of a `state-STEP.json` checkpoint file, `None` for other files.
fn checkpoint_step(path: &Path) -> Option<usize> {
    path.file_stem()?
        .to_str()?
        .strip_prefix("state-")?
        .parse()
        .ok()
}

/// The run's checkpoint state files, oldest step first (numerically: step 10 after step 8).
fn state_files(run: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| checkpoint_step(p).is_some())
        .collect();
    files.sort_by_key(|p| checkpoint_step(p));
    files
}

/// The quick start's configuration, on a budget (one epoch of 512 images, kNN on 1,000 / 200):
/// its run directory holds what a user looks at, every file valid. The events read back with
/// their checksums: a loss per step, kNN before and after training, the augmentation grid and
/// an embedding map per kNN evaluation.
#[test]
fn quickstart_run_directory_holds_what_a_user_looks_at() {
    use sce_train::report::tensorboard::{EventBody, ValueKind, event_files, read_events};
    let Some(data) = common::data_dir("quickstart_run_directory_holds_what_a_user_looks_at") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = sce_train()
        .args([
            "pretrain",
            "--config",
            "configs/quickstart.toml",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--output")
        .arg(&run)
        .args(["--epochs", "1", "--limit-train", "512"])
        .args([
            "--set",
            "eval.bank_limit=1000",
            "--set",
            "eval.test_limit=200",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let decoded = |name: &str| {
        image::open(run.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_rgb8()
    };
    assert_eq!(decoded("training.png").dimensions(), (1200, 360));
    assert_eq!(decoded("embedding_map.png").dimensions(), (760, 640));
    // Six images, each beside its weak and strong view.
    let grid = decoded("augmentations.png");
    assert!(
        grid.height() > 6 * 96 && grid.width() > 3 * 96,
        "{:?}",
        grid.dimensions()
    );

    let files = event_files(&run);
    assert_eq!(files.len(), 1, "{files:?}");
    let events = read_events(&files[0]).unwrap();
    let mut scalars: Vec<(String, i64)> = Vec::new();
    let mut images: Vec<(String, i64, Vec<u8>)> = Vec::new();
    for event in &events {
        if let Some(EventBody::Summary(summary)) = &event.body {
            for value in &summary.value {
                match &value.value {
                    Some(ValueKind::SimpleValue(v)) => {
                        assert!(v.is_finite(), "{}: {v}", value.tag);
                        scalars.push((value.tag.clone(), event.step));
                    }
                    Some(ValueKind::Image(image)) => images.push((
                        value.tag.clone(),
                        event.step,
                        image.encoded_image_string.clone(),
                    )),
                    None => panic!("an empty value: {}", value.tag),
                }
            }
        }
    }
    let steps_of = |tag: &str| -> Vec<i64> {
        scalars
            .iter()
            .filter(|(t, _)| t == tag)
            .map(|(_, s)| *s)
            .collect()
    };
    assert_eq!(
        steps_of("train/loss"),
        vec![1, 2, 3, 4],
        "512 images, batches of 128"
    );
    assert_eq!(steps_of("knn/top1"), vec![0, 4]);
    assert_eq!(steps_of("knn/top5"), vec![0, 4]);
    for tag in ["epoch/loss", "epoch/lr", "probe/top1", "epoch/images_per_s"] {
        assert_eq!(steps_of(tag), vec![4], "{tag}");
    }
    let image_tags: Vec<(&str, i64)> = images.iter().map(|(t, s, _)| (t.as_str(), *s)).collect();
    assert_eq!(
        image_tags,
        vec![
            ("augmentations", 0),
            ("embedding_map", 0),
            ("embedding_map", 4)
        ]
    );
    for (tag, _, png) in &images {
        image::load_from_memory(png).unwrap_or_else(|e| panic!("{tag}: {e}"));
    }
}

#[test]
fn tiny_run_writes_its_run_directory() {
    let Some(data) = common::data_dir("tiny_run_writes_its_run_directory") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = tiny(&data, &run, &[]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let line = json_line(&out);
    for key in [
        "epochs",
        "final_loss",
        "knn_top1",
        "knn_top1_initial",
        "probe_top1",
        "probe_train_top1",
        "images_per_s",
        "seconds",
    ] {
        assert!(!line[key].is_null(), "summary lacks {key}: {line}");
    }
    assert_eq!(line, summary(&run), "stdout JSON equals summary.json");
    assert_eq!(line["epochs"], 2);
    assert!(line["final_loss"].as_f64().unwrap().is_finite());
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "header + one row per epoch:\n{csv}");
    assert!(csv.starts_with(
        "epoch,step,loss,lr,positive_similarity,knn_top1,probe_train_top1,probe_top1,"
    ));
    // The online probe is checkpointed beside Burn's records, and listed in the manifest.
    let checkpoints = run.join("checkpoints");
    let manifest = std::fs::read_to_string(checkpoints.join("state-16.json")).unwrap();
    for record in ["probe", "probe_optim"] {
        assert!(checkpoints.join(format!("{record}-16.bpk")).is_file());
        assert!(manifest.contains(&format!("\"{record}\"")), "{manifest}");
    }
    for file in ["config.toml", "training.png", "summary.json"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    // The resolved config records the command line and reloads as is.
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("# ") && config.contains("limit_train = 1024"));
    // Reusing the directory for a new run is refused.
    let again = tiny(&data, &run, &[]).output().unwrap();
    assert_clean_failure(&again, 2, &["already holds a run", "--resume"]);
}

/// The tiny run for 3 epochs straight into `dir/full`, and the same run started in the
/// background into `dir/killed` (to be interrupted and compared with the first).
fn straight_run_and_a_second_started(data: &Path, dir: &Path) -> (PathBuf, PathBuf, Child) {
    let epochs = ["--epochs", "3"];
    let full = dir.join("full");
    let out = tiny(data, &full, &epochs).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let killed = dir.join("killed");
    let child = tiny(data, &killed, &epochs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (full, killed, child)
}

#[test]
fn sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run() {
    let Some(data) = common::data_dir("sigkill_mid_epoch_then_resume") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (full, killed, mut child) = straight_run_and_a_second_started(&data, dir.path());
    // Epoch 1 ends at step 8; kill as soon as its checkpoint is written, inside epoch 2.
    wait_for(&killed.join("checkpoints/state-8.json"), &mut child);
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.join("summary.json").exists(),
        "the run was not killed before its end"
    );

    let resumed = resume(&data, &killed);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("resuming at epoch 2"),
        "{}",
        stderr(&resumed)
    );
    // TensorBoard reads both sessions' event files as one run: the second opens with a
    // session start at the step it resumed from, so what the killed session logged past that
    // step is dropped, and its first loss is the next step's.
    use sce_train::report::tensorboard::{EventBody, event_files, read_events};
    let files = event_files(&killed);
    assert_eq!(files.len(), 2, "{files:?}");
    let second = read_events(&files[1]).unwrap();
    assert!(matches!(second[0].body, Some(EventBody::FileVersion(_))));
    assert!(matches!(second[1].body, Some(EventBody::SessionLog(_))));
    let resumed_at = second[1].step;
    assert!(resumed_at >= 8, "resumed at step {resumed_at}");
    let first_step = second
        .iter()
        .find(|e| match &e.body {
            Some(EventBody::Summary(s)) => s.value.iter().any(|v| v.tag == "train/loss"),
            _ => false,
        })
        .map(|e| e.step);
    assert_eq!(first_step, Some(resumed_at + 1));

    let (a, b) = (summary(&full), summary(&killed));
    assert_eq!(a["final_loss"], b["final_loss"], "final loss after resume");
    assert_eq!(a["knn_top1"], b["knn_top1"], "kNN after resume");
    assert_eq!(a["knn_top1_initial"], b["knn_top1_initial"]);
    assert_eq!(
        a["probe_top1"], b["probe_top1"],
        "online probe after resume"
    );
    assert_eq!(a["probe_train_top1"], b["probe_train_top1"]);
    assert_eq!(
        std::fs::read_to_string(full.join("metrics.csv"))
            .unwrap()
            .lines()
            .count(),
        std::fs::read_to_string(killed.join("metrics.csv"))
            .unwrap()
            .lines()
            .count()
    );
}

/// `pretrain --resume RUN` started in the background.
fn spawn_resume(data: &Path, run: &Path) -> Child {
    sce_train()
        .args(["pretrain", "--json", "--resume"])
        .arg(run)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Every tensor of a record file by name, sorted, with the parameter ids (drawn per process)
/// that optimizer state is keyed by replaced with the parameter's path from `ids`.
fn record_tensors(file: &Path, ids: &HashMap<u64, String>) -> Vec<(String, Vec<u8>)> {
    let mut tensors: Vec<(String, Vec<u8>)> = burn_pack::Reader::from_file(file)
        .unwrap()
        .into_tensors()
        .unwrap()
        .into_iter()
        .map(|t| {
            let (name, _, _, _, bytes) = t.into_parts().unwrap();
            let name = match name.split_once('.') {
                Some((id, rest)) => match id.parse().ok().and_then(|id: u64| ids.get(&id)) {
                    Some(path) => format!("{path}.{rest}"),
                    None => name,
                },
                None => name,
            };
            (name, bytes.to_vec())
        })
        .collect();
    tensors.sort();
    tensors
}

/// Parameter id → path, from a module record.
fn param_paths(file: &Path) -> HashMap<u64, String> {
    burn_pack::Reader::from_file(file)
        .unwrap()
        .into_tensors()
        .unwrap()
        .into_iter()
        .filter_map(|t| Some((t.param_id?, t.name.clone())))
        .collect()
}

/// Killed with SIGKILL at several moments in a row (drawn from a fixed seed: before the first
/// checkpoint, mid-epoch, during evaluation or a save, wherever they fall) and resumed each
/// time, a run ends bit-identical to the uninterrupted one: every tensor of its final model,
/// optimizer and probe records, and every loss and accuracy of metrics.csv.
#[test]
fn killed_again_and_again_a_run_ends_bit_identical() {
    let Some(data) = common::data_dir("killed_again_and_again") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (full, killed, mut child) = straight_run_and_a_second_started(&data, dir.path());
    wait_for(&killed.join("config.toml"), &mut child);
    // A fixed xorshift sequence: the same moments on every run of the test.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut kills = Vec::new();
    for _ in 0..4 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let delay = Duration::from_millis(300 + state % 2500);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills.push(delay);
        }
        child.wait().unwrap();
        if killed.join("summary.json").exists() {
            break;
        }
        child = spawn_resume(&data, &killed);
    }
    child.wait().unwrap();
    assert!(
        kills.len() >= 2,
        "killed only {kills:?}: the moments fall after the run's end"
    );
    if !killed.join("summary.json").exists() {
        let out = resume(&data, &killed);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    let last = |run: &Path| checkpoint_step(state_files(run).last().unwrap()).unwrap();
    let step = last(&full);
    assert_eq!(last(&killed), step, "killed at {kills:?}");
    let file = |run: &Path, record: &str| run.join(format!("checkpoints/{record}-{step}.bpk"));
    for (record, module) in [
        ("model", "model"),
        ("optim", "model"),
        ("probe", "probe"),
        ("probe_optim", "probe"),
    ] {
        let (a, b) = (
            record_tensors(&file(&full, record), &param_paths(&file(&full, module))),
            record_tensors(&file(&killed, record), &param_paths(&file(&killed, module))),
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!(
                x == y,
                "{record}-{step}.bpk: `{}` differs after kills at {kills:?}",
                x.0
            );
        }
    }
    // metrics.csv without its timing columns (images per second, seconds).
    let figures = |run: &Path| -> Vec<String> {
        std::fs::read_to_string(run.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplitn(3, ',').nth(2).unwrap().to_string())
            .collect()
    };
    assert_eq!(figures(&full), figures(&killed), "killed at {kills:?}");
}

/// A checkpoint whose weights hold a NaN but whose manifest was rewritten to match (so its
/// bytes look intact) is neither scored nor resumed: `knn` and `--resume` name the file and
/// the tensor and use the checkpoint before it. A run whose `config.toml` was deleted gets it
/// back from its checkpoints; when every checkpoint is damaged, the error says so.
#[test]
fn a_tampered_non_finite_checkpoint_is_refused_by_name() {
    let Some(data) = common::data_dir("a_tampered_non_finite_checkpoint") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = tiny(&data, &run, &[]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let step = checkpoint_step(state_files(&run).last().unwrap()).unwrap();
    // One convolution weight set to NaN, written back as Burn writes records.
    let file = run.join(format!("checkpoints/model-{step}.bpk"));
    let tensors: Vec<burn_pack::Tensor> = burn_pack::Reader::from_file(&file)
        .unwrap()
        .into_tensors()
        .unwrap();
    let mut victim = None;
    let tensors: Vec<burn_pack::Tensor> = tensors
        .into_iter()
        .map(|t| {
            let (name, dtype, shape, id, bytes) = t.into_parts().unwrap();
            let mut bytes = bytes.to_vec();
            if victim.is_none() && name.contains("conv") && dtype == burn_pack::DType::F32 {
                bytes[..4].copy_from_slice(&f32::NAN.to_le_bytes());
                victim = Some(name.clone());
            }
            burn_pack::Tensor::new(
                name,
                dtype,
                shape,
                id,
                burn_pack::Bytes::from_bytes_vec(bytes),
            )
        })
        .collect();
    let victim = victim.expect("a convolution weight");
    let bytes = burn_pack::Writer::new(tensors)
        .into_bytes()
        .unwrap()
        .to_vec();
    std::fs::write(&file, &bytes).unwrap();
    let manifest_path = run.join(format!("checkpoints/state-{step}.json"));
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["records"]["model"] = serde_json::json!({
        "bytes": bytes.len(),
        "crc32": crc32fast::hash(&bytes),
    });
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();

    let knn = |run: &Path| {
        sce_train()
            .args([
                "knn",
                "--json",
                "--bank-limit",
                "200",
                "--test-limit",
                "100",
            ])
            .arg("--checkpoint")
            .arg(run)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = knn(&run);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("model-{step}.bpk")) && err.contains(&victim) && err.contains("NaN"),
        "{err}"
    );
    let report = json_line(&out);
    assert!(report["step"].as_u64().unwrap() < step as u64, "{report}");

    let out = resume(&data, &run);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&victim) && err.contains("using the previous one"),
        "{err}"
    );
    assert!(
        run.join(format!("checkpoints/state-{step}.json")).exists(),
        "retrained to the end"
    );

    // A lost config.toml comes back from the newest checkpoint's manifest.
    std::fs::remove_file(run.join("config.toml")).unwrap();
    let out = knn(&run);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("config.toml was missing; restored it"),
        "{err}"
    );
    assert!(run.join("config.toml").is_file());

    // Every checkpoint damaged: an error that says so (not "train it first").
    for step in complete(&run) {
        std::fs::write(run.join(format!("checkpoints/model-{step}.bpk")), b"").unwrap();
    }
    assert_clean_failure(&knn(&run), 1, &["every checkpoint", "is damaged"]);
}

/// The steps of a run's checkpoints.
fn complete(run: &Path) -> Vec<usize> {
    state_files(run)
        .iter()
        .filter_map(|p| checkpoint_step(p))
        .collect()
}

#[test]
fn ctrl_c_saves_mid_epoch_and_resume_is_exact() {
    let Some(data) = common::data_dir("ctrl_c_saves_mid_epoch") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let out = tiny(&data, &full, &[]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let stopped = dir.path().join("stopped");
    let mut child = tiny(&data, &stopped, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&stopped.join("checkpoints/state-8.json"), &mut child);
    std::thread::sleep(Duration::from_millis(300));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("--resume"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // The stop was saved as its own checkpoint, between the epoch ends (steps 8 and 16).
    let newest = state_files(&stopped).pop().unwrap();
    let step = checkpoint_step(&newest).unwrap();
    assert!(step > 8 && step < 16, "checkpoint at step {step}");

    let resumed = resume(&data, &stopped);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let (a, b) = (summary(&full), summary(&stopped));
    assert_eq!(a["final_loss"], b["final_loss"]);
    assert_eq!(a["knn_top1"], b["knn_top1"]);
    assert_eq!(a["probe_top1"], b["probe_top1"]);
    assert_eq!(a["probe_train_top1"], b["probe_train_top1"]);
}

/// The tiny run at learning rate `lr` must stop with exit 1 and `messages`, leaving neither a
/// summary nor a checkpoint of the diverged state.
fn assert_divergence_is_no_result(test: &str, lr: &str, messages: &[&str]) {
    let Some(data) = common::data_dir(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let lr = format!("optim.lr={lr}");
    let out = tiny(
        &data,
        &run,
        &["--set", &lr, "--set", "optim.warmup_epochs=0"],
    )
    .output()
    .unwrap();
    assert_clean_failure(&out, 1, messages);
    assert!(!run.join("summary.json").exists());
    assert!(
        state_files(&run).is_empty(),
        "no checkpoint of a diverged state"
    );
}

#[test]
fn a_non_finite_loss_stops_the_run_and_names_the_step() {
    assert_divergence_is_no_result(
        "a_non_finite_loss_stops_the_run",
        "1e30",
        &["loss became", "at step", "last good checkpoint"],
    );
}

/// Mixed precision on the CPU backend (flex computes in f16, slowly): an f16 run scales its loss,
/// `metrics.csv` and the summary record the scale and the skipped steps, and the run resumed
/// from its first epoch's checkpoint ends exactly as the uninterrupted one, the scaler included.
#[test]
fn an_f16_run_records_its_loss_scale_and_resumes_exactly() {
    let Some(data) = common::data_dir("an_f16_run_records_its_loss_scale") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let budget = [
        "--precision",
        "f16",
        "--limit-train",
        "512",
        "--epochs",
        "2",
    ];
    let out = tiny(&data, &full, &budget).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_line(&out);
    assert_eq!(report["precision"], "f16", "{report}");
    assert_eq!(report["steps"], 8, "{report}");
    let skipped = report["skipped_steps"]
        .as_u64()
        .expect("an f16 run counts skipped steps");
    assert!(skipped < 8, "some steps were applied: {report}");
    let csv = std::fs::read_to_string(full.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for row in csv.lines().skip(1) {
        let cells: Vec<&str> = row.split(',').collect();
        let scale: f64 = cells[column("loss_scale")].parse().unwrap();
        assert!(
            scale > 0.0 && scale <= 65536.0 && scale.log2().fract() == 0.0,
            "a power of two at most 2^16: {row}"
        );
        assert!(
            cells[column("skipped_steps")].parse::<u64>().is_ok(),
            "{row}"
        );
    }

    // The same run, stopped after its first epoch: its final checkpoint and summary removed.
    let resumed = dir.path().join("resumed");
    let copied = std::process::Command::new("cp")
        .args(["-r"])
        .arg(&full)
        .arg(&resumed)
        .status()
        .unwrap();
    assert!(copied.success());
    for file in std::fs::read_dir(resumed.join("checkpoints")).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains("-8.") {
            std::fs::remove_file(path).unwrap();
        }
    }
    std::fs::remove_file(resumed.join("summary.json")).unwrap();
    let out = resume(&data, &resumed);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resuming at epoch 2"),
        "{}",
        stderr(&out)
    );
    let (a, b) = (summary(&full), summary(&resumed));
    for key in ["final_loss", "knn_top1", "skipped_steps", "probe_top1"] {
        assert_eq!(a[key], b[key], "{key} after resume");
    }
    let scaler = |run: &Path| {
        let text = std::fs::read_to_string(run.join("checkpoints/state-8.json")).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
        manifest["state"]["loss_scale"].clone()
    };
    assert!(scaler(&full).is_object(), "the scaler is checkpointed");
    assert_eq!(scaler(&full), scaler(&resumed));
}

/// A learning rate far too high drives BatchNorm's running variances to infinity while the loss
/// stays finite: the state check stops the run before it is scored, saved or summarised.
#[test]
fn a_diverged_state_with_a_finite_loss_is_no_result() {
    assert_divergence_is_no_result(
        "a_diverged_state_with_a_finite_loss_is_no_result",
        "100000",
        &[
            "NaN or infinite values",
            "at step",
            "last finite checkpoint",
        ],
    );
}

/// Two CPU "devices" exercise the multi-device path: each step takes one batch per device
/// (half the steps), the queue takes both devices' keys, and a queue that cannot hold whole
/// steps of both is refused up front.
#[test]
fn two_devices_split_the_epoch() {
    let Some(data) = common::data_dir("two_devices_split_the_epoch") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = tiny(&data, &run, &["--devices", "cpu,cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let line = json_line(&out);
    assert_eq!(
        line["steps"], 8,
        "1,024 images / (2 devices × 128) × 2 epochs"
    );
    assert!(line["final_loss"].as_f64().unwrap().is_finite());
    assert!(
        line["probe_top1"].is_f64(),
        "the probe gathers both devices' batches"
    );

    let out = tiny(
        &data,
        &dir.path().join("bad"),
        &["--devices", "cpu,cpu", "--set", "method.queue_size=1152"],
    )
    .output()
    .unwrap();
    assert_clean_failure(&out, 2, &["method.queue_size", "2 devices"]);
}

/// A save that fails (here the final model record's name is taken by a directory, which even
/// root cannot replace) ends the run non-zero, naming the file and the OS error, with no
/// summary; the previous checkpoint survives and the run continues from it. A damaged newest
/// checkpoint falls back to the intact one before it, and a resume under an edited
/// configuration is refused naming the key.
#[test]
fn failed_saves_are_loud_and_damaged_checkpoints_fall_back() {
    let Some(data) = common::data_dir("failed_saves_are_loud") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Two epochs of 8 steps: checkpoints at steps 8 and 16 (the last).
    std::fs::create_dir_all(run.join("checkpoints/model-16.bpk")).unwrap();
    let out = tiny(&data, &run, &[]).output().unwrap();
    assert_clean_failure(
        &out,
        1,
        &["cannot save the checkpoint at step 16", "model-16.bpk"],
    );
    assert!(common::stdout(&out).is_empty(), "no JSON summary on stdout");
    assert!(
        !run.join("summary.json").exists(),
        "no summary over a lost save"
    );
    let steps: Vec<_> = state_files(&run)
        .iter()
        .filter_map(|p| checkpoint_step(p))
        .collect();
    assert_eq!(
        steps,
        [8],
        "the earlier checkpoint is kept, no manifest for step 16"
    );

    std::fs::remove_dir(run.join("checkpoints/model-16.bpk")).unwrap();
    let out = resume(&data, &run);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resuming at epoch 2"),
        "{}",
        stderr(&out)
    );
    let finished = summary(&run);

    // The final optimizer record truncated: the run falls back to step 8, says so, and
    // retrains epoch 2 to the same numbers.
    std::fs::write(run.join("checkpoints/optim-16.bpk"), b"").unwrap();
    let out = resume(&data, &run);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("step 16 is damaged") && err.contains("optim-16.bpk"),
        "{err}"
    );
    assert!(err.contains("resuming at epoch 2"), "{err}");
    assert_eq!(summary(&run)["final_loss"], finished["final_loss"]);
    assert_eq!(summary(&run)["knn_top1"], finished["knn_top1"]);

    // An edited configuration that changes the experiment is refused, naming the key.
    let config = run.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("batch_size = 128", "batch_size = 64")).unwrap();
    let out = resume(&data, &run);
    assert_clean_failure(&out, 2, &["run.batch_size", "128 → 64", "changed since"]);
    // --force continues anyway, saying what changed (here: nothing left to train).
    let out = sce_train()
        .args(["pretrain", "--force", "--resume"])
        .arg(&run)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("run.batch_size") && err.contains("--force"),
        "{err}"
    );
}

/// A run killed before its first checkpoint restarts from step 0 under `--resume` (instead of
/// each of `--resume` and a plain re-run pointing at the other); while a run is alive, a
/// second process writing its directory is refused.
#[test]
fn a_run_killed_before_its_first_checkpoint_restarts_and_has_one_writer() {
    let Some(data) = common::data_dir("a_run_killed_before_its_first_checkpoint") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut child = tiny(&data, &run, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&run.join("config.toml"), &mut child);
    let second = resume(&data, &run);
    let pid = child.id().to_string();
    assert_clean_failure(&second, 1, &["in use by another sce-train process", &pid]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        state_files(&run).is_empty(),
        "killed before the first checkpoint"
    );

    let again = tiny(&data, &run, &[]).output().unwrap();
    assert_clean_failure(&again, 2, &["already holds a run", "--resume"]);
    let out = resume(&data, &run);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("starting the run from step 0"), "{err}");
    assert_eq!(json_line(&out)["steps"], 16);
}

/// A 2-class image folder (`train/` and `val/`, 24 and 8 images) with one truncated JPEG in
/// each split.
fn folder_with_corrupt_images(root: &Path) {
    for (split, count) in [("train", 12), ("val", 4)] {
        for (c, class) in ["circle", "square"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let v = ((x * 7 + y * 3 + i * 11) % 256) as u8;
                    image::Rgb([v, (c as u8) * 200, 255 - v])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
        std::fs::write(
            root.join(split).join("circle/broken.jpg"),
            b"\xff\xd8\xff\xe0 cut",
        )
        .unwrap();
    }
}

/// `data.skip_corrupt` holds for training and every evaluation: the run finishes, each
/// unreadable image is warned about as it is met and listed in summary.json; `knn` on the run
/// skips too. Without the key, the first unreadable image stops the run naming it.
#[test]
fn skip_corrupt_holds_for_training_and_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    folder_with_corrupt_images(&data);
    let folder_run = |run: &Path, extra: &[&str]| {
        sce_train()
            .args([
                "pretrain",
                "--config",
                "configs/tiny.toml",
                "--json",
                "--data-dir",
            ])
            .arg(&data)
            .arg("--output")
            .arg(run)
            .args([
                "--set",
                "data.dataset=folder",
                "--batch-size",
                "8",
                "--epochs",
                "1",
                "--set",
                "optim.warmup_epochs=0",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let strict = folder_run(&dir.path().join("strict"), &[]);
    assert_clean_failure(&strict, 1, &["broken.jpg"]);

    let run = dir.path().join("skip");
    let out = folder_run(&run, &["--set", "data.skip_corrupt=true"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("warning: skipped unreadable image").count(),
        2,
        "each image warned once: {err}"
    );
    let skipped = summary(&run)["skipped"].as_array().unwrap().clone();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped
            .iter()
            .all(|s| s.as_str().unwrap().contains("broken.jpg"))
    );

    let out = sce_train()
        .args(["knn", "--k", "5", "--checkpoint"])
        .arg(&run)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("skipped unreadable image"), "{err}");
}

/// A real write error (the file-size limit, as on a full disk: EFBIG instead of ENOSPC) while
/// saving the first checkpoint: the run stops non-zero naming the file and the OS error, and a
/// resume without the limit restarts it from step 0 and finishes.
#[cfg(unix)]
#[test]
fn a_write_error_while_saving_is_loud_and_the_run_restarts() {
    let Some(data) = common::data_dir("a_write_error_while_saving") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let plain = tiny(&data, &run, &[]);
    // 400 KiB: the plot (~280 KiB) fits, the model record (~570 KiB) does not. SIGXFSZ is
    // ignored so the write fails with an error instead of killing the process.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 400; exec \"$@\"")
        .arg("bash")
        .arg(plain.get_program())
        .args(plain.get_args())
        .current_dir(common::root())
        .output()
        .unwrap();
    assert_clean_failure(
        &out,
        1,
        &[
            "cannot save the checkpoint at step 8",
            "model-8.bpk",
            "File too large",
        ],
    );
    assert!(state_files(&run).is_empty());
    assert!(!run.join("summary.json").exists());

    let out = resume(&data, &run);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("starting the run from step 0"), "{err}");
}

/// A folder stored class by class (10 classes of 8 images, `val/` 2 per class): a prefix of
/// half of it would hold 5 classes.
fn class_ordered_folder(root: &Path) {
    for (split, count) in [("train", 8), ("val", 2)] {
        for class in 0..10u8 {
            let dir = root.join(split).join(format!("class{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                image::RgbImage::from_fn(32, 32, |x, y| {
                    image::Rgb([class * 25, (x * 8) as u8 ^ i, (y * 8) as u8])
                })
                .save(dir.join(format!("{i}.png")))
                .unwrap();
            }
        }
    }
}

/// One epoch of `configs/folder.toml` on `data` with a network small enough for seconds (width 4,
/// 32 pixels, batch 8, a 64-key queue), into `output`.
fn small_folder_run(data: &Path, output: &Path) -> std::process::Command {
    let mut cmd = sce_train();
    cmd.args(["pretrain", "--config", "configs/folder.toml", "--data-dir"])
        .arg(data)
        .arg("--output")
        .arg(output)
        .args(["--epochs", "1", "--batch-size", "8"])
        .args(["--set", "model.width=4", "--set", "augment.size=32"])
        .args(["--set", "method.queue_size=64"]);
    cmd
}

/// Paths need not be UTF-8: a Latin-1 dataset folder, run directory and `embed --input`
/// folder work end to end (the run's reports write such names with U+FFFD), and the summary
/// records which data folder the run read.
#[cfg(unix)]
#[test]
fn latin1_paths_work_everywhere() {
    use std::os::unix::ffi::OsStrExt;
    let latin1 = |name: &[u8]| std::ffi::OsStr::from_bytes(name).to_os_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(latin1(b"donn\xe9es"));
    class_ordered_folder(&data);
    let run = dir.path().join(latin1(b"r\xe9sultat"));
    let out = small_folder_run(&data, &run)
        .arg("--json")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let summary = json_line(&out);
    assert!(
        summary["run_dir"]
            .as_str()
            .unwrap()
            .ends_with("r\u{fffd}sultat"),
        "{summary}"
    );
    assert!(
        summary["data_dir"]
            .as_str()
            .unwrap()
            .ends_with("donn\u{fffd}es"),
        "{summary}"
    );
    assert!(err.contains("data: folder from"), "{err}");

    let out = sce_train()
        .args(["embed", "--json", "--checkpoint"])
        .arg(&run)
        .arg("--input")
        .arg(data.join("val"))
        .arg("--output")
        .arg(run.join("embeddings.safetensors"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_line(&out)["images"], 20);
}

/// Limits take seeded, class-stratified subsets: the training subset and the kNN bank of a
/// class-ordered folder hold every class (the mechanism behind `configs/imagenet.toml`'s
/// `bank_limit`). The folder recipe shortened to one epoch from the command line runs, its
/// warmup scaled with a notice.
#[test]
fn limits_keep_every_class_and_short_runs_scale_their_warmup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    class_ordered_folder(&data);
    let out = small_folder_run(&data, &dir.path().join("run"))
        .args(["--limit-train", "40", "--set", "eval.bank_limit=20"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("training set: 40 of 80 images, 10 of 10 classes"),
        "{err}"
    );
    assert!(
        err.contains("kNN bank: 20 of 80 images, 10 of 10 classes"),
        "{err}"
    );
    assert!(
        err.contains("optim.warmup_epochs scaled from 5 to 0.05"),
        "{err}"
    );
}

/// The online linear probe trains on labelled data by default (its train and test accuracy in
/// `metrics.csv` and the summary, its records in each checkpoint); one key turns it off, and
/// the trunk trains bit for bit the same either way. The same holds for the TensorBoard events
/// and the embedding map.
#[test]
fn the_online_probe_is_on_for_labelled_data_and_off_with_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    class_ordered_folder(&data);
    let run = |name: &str, extra: &[&str]| {
        let out = small_folder_run(&data, &dir.path().join(name))
            .arg("--json")
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        (json_line(&out), dir.path().join(name))
    };
    let (on, on_dir) = run("on", &[]);
    for key in ["probe_top1", "probe_train_top1"] {
        let v = on[key].as_f64().unwrap_or_else(|| panic!("{key} in {on}"));
        assert!((0.0..=100.0).contains(&v), "{key} = {v}");
    }
    let csv = std::fs::read_to_string(on_dir.join("metrics.csv")).unwrap();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert!(!row[6].is_empty() && !row[7].is_empty(), "{csv}");

    // Reports off too: the pictures and events are on by default, one key each turns them
    // off, and neither changes what trains.
    let (off, off_dir) = run(
        "off",
        &[
            "--set",
            "eval.online_probe=false",
            "--set",
            "report.tensorboard=false",
            "--set",
            "report.embedding_map=false",
        ],
    );
    let events = |dir: &Path| sce_train::report::tensorboard::event_files(dir).len();
    assert_eq!(events(&on_dir), 1);
    assert!(on_dir.join("embedding_map.png").is_file());
    assert_eq!(events(&off_dir), 0);
    assert!(!off_dir.join("embedding_map.png").exists());
    assert!(off_dir.join("augmentations.png").is_file());
    assert!(
        off["probe_top1"].is_null() && off["probe_train_top1"].is_null(),
        "{off}"
    );
    assert!(off["knn_top1"].is_f64(), "kNN stays on");
    // The probe never reaches the trunk: the same seed trains the same network without it.
    assert_eq!(on["final_loss"], off["final_loss"]);
    assert_eq!(on["knn_top1"], off["knn_top1"]);
    let files: Vec<String> = std::fs::read_dir(off_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!files.iter().any(|f| f.starts_with("probe")), "{files:?}");
}

/// Short reductions (what devices with a loop budget, such as Mesa's lavapipe, train with)
/// compute what Burn's one-pass ones compute: on the CPU, forced with `SCE_REDUCTIONS`, the two
/// runs' first three step losses agree within 5e-4 (relative), their kNN within 3 points, and
/// the note says which is used. Four steps only, as the GPU-path stage: this tiny network's
/// training is chaotic, and runs that differ only in summation order drift apart after that.
#[test]
fn short_reduction_batch_norm_trains_like_the_fused_one() {
    let Some(data) = common::data_dir("short_reduction_batch_norm_trains") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |mode: &str| {
        let run_dir = dir.path().join(mode);
        let out = tiny(
            &data,
            &run_dir,
            &["--set", "data.limit_train=512", "--set", "run.epochs=1"],
        )
        .env("SCE_REDUCTIONS", mode)
        .output()
        .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let log = std::fs::read_to_string(run_dir.join("train/epoch-1/Loss.log")).unwrap();
        let losses: Vec<f64> = log
            .lines()
            .take(3)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(losses.len(), 3, "{log}");
        (
            json_line(&out)["knn_top1"].as_f64().unwrap(),
            losses,
            stderr(&out),
        )
    };
    let (fused, fused_losses, fused_log) = run("fused");
    let (short, short_losses, short_log) = run("short");
    assert!(short_log.contains("short passes"), "{short_log}");
    assert!(!fused_log.contains("short passes"), "{fused_log}");
    for (a, b) in short_losses.iter().zip(&fused_losses) {
        assert!(
            (a - b).abs() <= 5e-4 * b.abs(),
            "step losses {short_losses:?} with short reductions against {fused_losses:?} fused"
        );
    }
    assert!(
        (fused - short).abs() <= 3.0,
        "kNN {short}% with short reductions against {fused}% fused"
    );
}
