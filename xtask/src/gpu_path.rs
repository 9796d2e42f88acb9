//! The GPU-path stage of `cargo xtask ci`: the `wgpu` build checked and trained on whatever
//! Vulkan device the machine has — on CI, Mesa's software lavapipe (docs/backends.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::{step, target_dir};

/// Debian's packages of the Vulkan loader and Mesa's drivers (lavapipe among them).
const PACKAGES: [&str; 2] = ["mesa-vulkan-drivers", "libvulkan1"];

/// Largest kNN top-1 gap, in points, allowed between the `wgpu` and the CPU run.
const MAX_KNN_GAP: f64 = 3.0;

/// Largest relative gap allowed between the two runs' losses over their first steps.
const MAX_LOSS_GAP: f64 = 5e-4;

/// Largest relative gap allowed between the f16 and the f32 run's losses on the same device
/// over their first steps: f16 rounds each convolution's and linear layer's inputs, weights and
/// outputs to 11 significant bits (docs/backends.md has the measured gaps).
const MAX_F16_LOSS_GAP: f64 = 1e-2;

/// Steps compared loss for loss: the first two train from the shared initial weights, the
/// third after the first update (the learning rate warms up from 0), so they test the forward
/// pass, the backward pass and the optimizer. Later steps are left out because this tiny
/// network's training is chaotic — CPU runs differing only in summation order drift apart
/// tenfold per step from the fourth on — so there only the kNN is compared.
const LOSS_STEPS: usize = 3;

/// The comparison runs `configs/tiny.toml` on 512 images for one epoch: four steps, short
/// enough that the two runs have not yet drifted apart (see [`LOSS_STEPS`]).
const TINY_OVERRIDES: [&str; 4] = ["--set", "data.limit_train=512", "--set", "run.epochs=1"];

/// Where Vulkan drivers declare themselves (the loader's ICD search folders on Linux).
const ICD_FOLDERS: [&str; 2] = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"];

/// Runs the stage with a build of `features` (`wgpu` and whatever else CI builds once for
/// several stages), or says in one line why it is skipped.
pub fn run(data: &str, features: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    if !vulkan_present() {
        if !may_install() {
            eprintln!(
                "\n==> GPU path: skipped, no Vulkan driver here; install one (Debian: `apt-get \
                 install {}`) or run as root with CI=true to have xtask install it",
                PACKAGES.join(" ")
            );
            return Ok(());
        }
        apt_install(&PACKAGES)?;
        anyhow::ensure!(
            vulkan_present(),
            "installed {} but found no Vulkan driver in {}",
            PACKAGES.join(" "),
            ICD_FOLDERS.join(" or ")
        );
    }
    step(
        "GPU path: build with wgpu",
        "cargo",
        &["build", "-p", "sce-train", "--features", features],
        &[],
    )?;
    let bin = target_dir().join("debug/sce-train");
    let bin = bin.to_str().context("non-UTF-8 path")?;
    let runtime = runtime_dir()?;
    let envs = [("XDG_RUNTIME_DIR", runtime.as_str())];
    step(
        "GPU path: check on wgpu",
        bin,
        &["check", "--device", "wgpu"],
        &envs,
    )?;
    step(
        "GPU path: check on wgpu in f16",
        bin,
        &["check", "--device", "wgpu", "--precision", "f16"],
        &envs,
    )?;
    missing_device_is_refused(bin, &envs)?;
    bf16_is_checked_or_refused(bin, &envs)?;
    let runs = target_dir().join("gpu-path");
    let wgpu = tiny_run(bin, "wgpu", "f32", &runs, data, &envs)?;
    let cpu = tiny_run(bin, "cpu", "f32", &runs, data, &envs)?;
    let half = tiny_run(bin, "wgpu", "f16", &runs, data, &envs)?;
    eprintln!(
        "\nGPU path: configs/tiny.toml, 4 steps: kNN top-1 {:.1} % on wgpu, {:.1} % on cpu \
         (untrained: {:.1} % and {:.1} %)",
        wgpu.knn, cpu.knn, wgpu.knn_initial, cpu.knn_initial
    );
    let mut failures = compare_losses(
        (&wgpu.losses, "on wgpu"),
        (&cpu.losses, "on cpu"),
        MAX_LOSS_GAP,
    );
    for (what, a, b) in [
        ("kNN top-1", wgpu.knn, cpu.knn),
        ("untrained kNN top-1", wgpu.knn_initial, cpu.knn_initial),
    ] {
        if (a - b).abs() > MAX_KNN_GAP {
            failures.push(format!(
                "the {what} differs by {:.1} points (allowed: {MAX_KNN_GAP})",
                (a - b).abs()
            ));
        }
    }
    if !failures.is_empty() {
        bail!(
            "the wgpu run does not compute what the CPU run computes: {}",
            failures.join("; ")
        );
    }
    compare_f16(&half, &wgpu)?;
    eprintln!(
        "GPU path passed in {:.1} min",
        start.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// Whether the Vulkan loader and at least one driver are installed.
fn vulkan_present() -> bool {
    let loader = Command::new("ldconfig")
        .arg("-p")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("libvulkan.so.1"));
    let driver = ICD_FOLDERS.iter().any(|folder| {
        std::fs::read_dir(folder).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
    });
    loader && driver
}

/// Whether xtask may install system packages a stage needs: on CI (`CI=true`), as root.
pub fn may_install() -> bool {
    std::env::var("CI").as_deref() == Ok("true") && is_root()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Installs Debian packages (CI=true, as root).
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let noninteractive = [("DEBIAN_FRONTEND", "noninteractive")];
    step(
        "apt-get update",
        "apt-get",
        &["update", "-qq"],
        &noninteractive,
    )?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(packages);
    step(
        &format!("install {} (CI=true, root)", packages.join(" ")),
        "apt-get",
        &args,
        &noninteractive,
    )
}

/// wgpu's Vulkan loader wants `$XDG_RUNTIME_DIR`; CI containers often have none.
fn runtime_dir() -> anyhow::Result<String> {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Ok(dir.to_string_lossy().into_owned());
    }
    let dir = target_dir().join("xdg-runtime");
    std::fs::create_dir_all(&dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir.display().to_string())
}

/// What the comparison reads from a run's `summary.json`.
struct TinyRun {
    knn: f64,
    knn_initial: f64,
    /// Steps skipped for overflowing gradients (f16 runs).
    skipped_steps: Option<u64>,
    final_loss: f64,
    /// The losses of the first [`LOSS_STEPS`] steps.
    losses: Vec<f64>,
}

/// `configs/tiny.toml` (seed 0, [`TINY_OVERRIDES`]) on `device` in `precision`, in a fresh
/// `runs/<device>-<precision>` folder.
fn tiny_run(
    bin: &str,
    device: &str,
    precision: &str,
    runs: &Path,
    data: &str,
    envs: &[(&str, &str)],
) -> anyhow::Result<TinyRun> {
    let dir: PathBuf = runs.join(format!("{device}-{precision}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let dir_arg = dir.to_str().context("non-UTF-8 path")?;
    let mut args = vec![
        "pretrain",
        "--config",
        "configs/tiny.toml",
        "--device",
        device,
        "--data-dir",
        data,
        "--output",
        dir_arg,
        "--precision",
        precision,
    ];
    args.extend(TINY_OVERRIDES);
    step(
        &format!("GPU path: tiny run on {device} in {precision}"),
        bin,
        &args,
        envs,
    )?;
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("the {device} run left no {}", path.display()))?;
    let summary: serde_json::Value = serde_json::from_str(&text)?;
    let number = |key: &str| {
        summary[key]
            .as_f64()
            .with_context(|| format!("{}: no number `{key}`", path.display()))
    };
    Ok(TinyRun {
        knn: number("knn_top1")?,
        knn_initial: number("knn_top1_initial")?,
        skipped_steps: summary["skipped_steps"].as_u64(),
        final_loss: number("final_loss")?,
        losses: step_losses(&dir)?,
    })
}

/// The first [`LOSS_STEPS`] losses of the run's step log (burn-train's `Loss.log`: one
/// `value,count` line per step).
fn step_losses(run: &Path) -> anyhow::Result<Vec<f64>> {
    let path = run.join("train/epoch-1/Loss.log");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the step losses in {}", path.display()))?;
    let losses: Vec<f64> = text
        .lines()
        .take(LOSS_STEPS)
        .map(|line| line.split(',').next().unwrap_or("").parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a loss per line", path.display()))?;
    anyhow::ensure!(
        losses.len() == LOSS_STEPS,
        "{} holds {} steps, fewer than {LOSS_STEPS}",
        path.display(),
        losses.len()
    );
    Ok(losses)
}

/// Steps whose losses the f16 run must share with the f32 run: the first computes on the
/// initial weights; the second follows step 1, whose learning rate is 0 (the warmup starts
/// there) — applied in f32, skipped by the loss scaler in f16, the weights are the same either
/// way, and both runs enqueue the same keys and take the same EMA step. From step 3 on, the
/// f16 run has skipped updates the f32 run applied (the scaler starts at 2^16 and halves on
/// each of the first overflowing steps), so its losses differ by design.
const F16_LOSS_STEPS: usize = 2;

/// The f16 run against the f32 run on the same device: the first [`F16_LOSS_STEPS`] losses
/// agree within [`MAX_F16_LOSS_GAP`], the untrained network's kNN (the trunk's forward in f16)
/// within [`MAX_KNN_GAP`] points, the loss scaler ran (it reports its skipped steps) and the
/// run ended finite.
fn compare_f16(half: &TinyRun, full: &TinyRun) -> anyhow::Result<()> {
    let mut failures = compare_losses(
        (&half.losses[..F16_LOSS_STEPS], "in f16"),
        (&full.losses, "in f32"),
        MAX_F16_LOSS_GAP,
    );
    eprintln!(
        "GPU path: f16 kNN top-1 {:.1} % after the run (f32 {:.1} %), untrained {:.1} % (f32 \
         {:.1} %); {} of the steps skipped by the loss scaler",
        half.knn,
        full.knn,
        half.knn_initial,
        full.knn_initial,
        half.skipped_steps.map_or("none".into(), |n| n.to_string())
    );
    if half.skipped_steps.is_none() {
        failures.push("the f16 run reports no loss scaler".into());
    }
    if (half.knn_initial - full.knn_initial).abs() > MAX_KNN_GAP {
        failures.push(format!(
            "the untrained kNN top-1 differs by {:.1} points (allowed: {MAX_KNN_GAP})",
            (half.knn_initial - full.knn_initial).abs()
        ));
    }
    if !half.final_loss.is_finite() {
        failures.push(format!("the final loss is {}", half.final_loss));
    }
    if !failures.is_empty() {
        bail!(
            "the f16 run does not compute what the f32 run computes: {}",
            failures.join("; ")
        );
    }
    Ok(())
}

/// Prints two runs' losses step by step (each run's label after its loss) and returns a failure
/// for every step whose relative gap exceeds `max_gap`; steps beyond the shorter run are not
/// compared.
fn compare_losses(
    (run, label): (&[f64], &str),
    (reference, reference_label): (&[f64], &str),
    max_gap: f64,
) -> Vec<String> {
    let mut failures = Vec::new();
    for (step, (a, b)) in run.iter().zip(reference).enumerate() {
        let gap = (a - b).abs() / b.abs().max(1e-12);
        eprintln!(
            "GPU path: step {} loss {a:.6} {label}, {b:.6} {reference_label} (relative gap \
             {gap:.1e})",
            step + 1
        );
        if gap > max_gap {
            failures.push(format!(
                "step {}'s loss differs by {gap:.1e} (allowed: {max_gap:.0e})",
                step + 1
            ));
        }
    }
    failures
}

/// bf16 is checked where the device computes it and refused by name where it does not (Mesa's
/// lavapipe has no bf16 arithmetic), never computed as garbage.
fn bf16_is_checked_or_refused(bin: &str, envs: &[(&str, &str)]) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .args(["check", "--device", "wgpu", "--precision", "bf16"])
        .envs(envs.iter().copied())
        .output()
        .with_context(|| format!("cannot start {bin}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprintln!("\nGPU path: the device computes bf16 and passes its checks");
        return Ok(());
    }
    anyhow::ensure!(
        out.status.code() == Some(2)
            && stderr.contains("cannot compute in bf16")
            && !stderr.contains("panicked"),
        "`sce-train check --device wgpu --precision bf16` should pass or be refused naming bf16 \
         (exit 2), got {}: {stderr}",
        out.status
    );
    eprintln!("\nGPU path: bf16 is refused: {}", stderr.trim());
    Ok(())
}

/// A GPU the machine lacks is a usage error naming the devices it has, never the backend's
/// panic on first use.
fn missing_device_is_refused(bin: &str, envs: &[(&str, &str)]) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .args(["check", "--device", "wgpu:9"])
        .envs(envs.iter().copied())
        .output()
        .with_context(|| format!("cannot start {bin}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.code() == Some(2)
            && stderr.contains("is not on this machine")
            && !stderr.contains("panicked"),
        "`sce-train check --device wgpu:9` should be refused as a missing device (exit 2), \
         got {}: {stderr}",
        out.status
    );
    eprintln!("\nGPU path: a missing device is refused: {}", stderr.trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with_log(name: &str, log: &str) -> PathBuf {
        let run = std::env::temp_dir().join(format!("xtask-{}-{name}", std::process::id()));
        std::fs::create_dir_all(run.join("train/epoch-1")).unwrap();
        std::fs::write(run.join("train/epoch-1/Loss.log"), log).unwrap();
        run
    }

    #[test]
    fn reads_the_first_steps_of_the_loss_log() {
        let run = run_with_log("ok", "5.5,1\n6.25,1\n6.5,1\n6.75,1\n6.2,final\n");
        assert_eq!(step_losses(&run).unwrap(), vec![5.5, 6.25, 6.5]);
        let short = run_with_log("short", "5.5,1\n6.25,1\n");
        let err = step_losses(&short).unwrap_err().to_string();
        assert!(err.contains("fewer than 3"), "{err}");
        let garbled = run_with_log("garbled", "5.5,1\nloss,1\n6.5,1\n");
        let err = step_losses(&garbled).unwrap_err().to_string();
        assert!(err.contains("not a loss per line"), "{err}");
        for dir in [run, short, garbled] {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
