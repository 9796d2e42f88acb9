//! Project chores: `cargo xtask ci` (what CI runs), `cargo xtask gpu-path` (its GPU-path stage
//! alone), `cargo xtask bench` (benchmark figures; `--gpu wgpu|cuda` the GPU set, f32 and f16).

mod gpu_path;
mod mpi;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs one step, echoing it and its duration; any failure stops everything.
fn step(name: &str, program: &str, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("\n==> {name}: {program} {}", args.join(" "));
    let start = Instant::now();
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    eprintln!(
        "<== {name}: {status} in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("step `{name}` failed ({status})");
    }
    Ok(())
}

/// Cargo's build folder: `$CARGO_TARGET_DIR` or `target/` of the workspace.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| {
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Whether `dir` holds the datasets the tests read.
fn has_test_data(dir: &Path) -> bool {
    TEST_DATASETS.iter().all(|d| dir.join(d).is_dir())
}

/// The real datasets the tests need (the few sample images they also use are generated from
/// these when `samples/` is absent).
const TEST_DATASETS: [&str; 2] = ["fashion-mnist", "mnist"];

/// The real-data folder, found the way the product finds data: `$SCE_DATA_DIR`, else
/// `../shared/data` beside the checkout (this project's CI), else the user cache — where
/// `sce-train fetch` finds the datasets or downloads them (checksums verified).
fn data_dir() -> anyhow::Result<String> {
    if let Some(dir) = std::env::var_os("SCE_DATA_DIR") {
        let dir = PathBuf::from(dir);
        if !has_test_data(&dir) {
            bail!(
                "SCE_DATA_DIR={} lacks fashion-mnist/ or mnist/; point it at a folder holding \
                 both, or unset it to use the user cache",
                dir.display()
            );
        }
        return Ok(dir.canonicalize()?.display().to_string());
    }
    let shared = workspace_root().join("../shared/data");
    if has_test_data(&shared) {
        return Ok(shared.canonicalize()?.display().to_string());
    }
    fetch_test_data()
}

/// Finds or downloads the test datasets with the product's own `sce-train fetch` (the binary
/// the tests build anyway) and links them into `target/test-data`, the `$SCE_DATA_DIR` of the
/// tests.
fn fetch_test_data() -> anyhow::Result<String> {
    step(
        "build (to fetch the test data)",
        "cargo",
        &["test", "--workspace", "--all-targets", "--no-run"],
        &[],
    )?;
    let bin = target_dir().join("debug/sce-train");
    eprintln!(
        "\n==> test data: no SCE_DATA_DIR and no ../shared/data; looking in the user cache, \
         downloading what is missing (about 60 MB)"
    );
    let out = Command::new(&bin)
        .arg("fetch")
        .args(TEST_DATASETS)
        .arg("--json")
        .current_dir(workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "the tests need real data: Fashion-MNIST and MNIST (the four IDX .gz files each) in \
             the user cache (~/.cache/sce-rs/fashion-mnist/ and ~/.cache/sce-rs/mnist/ on \
             Linux) or SCE_DATA_DIR; fetching them failed (see above)"
        );
    }
    #[derive(serde::Deserialize)]
    struct Fetched {
        dataset: String,
        path: PathBuf,
    }
    let fetched: Vec<Fetched> =
        serde_json::from_slice(&out.stdout).context("unexpected output of sce-train fetch")?;
    let links = target_dir().join("test-data");
    std::fs::create_dir_all(&links)?;
    for f in fetched {
        let link = links.join(&f.dataset);
        let _ = std::fs::remove_file(&link);
        link_dir(&f.path, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), f.path.display()))?;
    }
    Ok(links.canonicalize()?.display().to_string())
}

#[cfg(unix)]
fn link_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn link_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

fn ci() -> anyhow::Result<()> {
    let start = Instant::now();
    step("format", "cargo", &["fmt", "--all", "--check"], &[])?;
    let data = data_dir()?;
    let mpi = mpi::prepare()?;
    // One check build covers clippy on every target and the GPU code paths: `cuda` needs
    // DOCS_RS=1 offline (its build script would download LLVM), `wgpu` builds as is; `mpi`
    // where Open MPI is.
    let checked = match mpi {
        true => "sce-train/wgpu,sce-train/cuda,sce-train/mpi",
        false => "sce-train/wgpu,sce-train/cuda",
    };
    step(
        &format!("clippy (flex + {checked})"),
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            checked,
            "--",
            "-D",
            "warnings",
        ],
        &[("DOCS_RS", "1")],
    )?;
    step(
        "tests (CPU backend, real data)",
        "cargo",
        &["test", "--workspace", "--all-targets"],
        &[("SCE_DATA_DIR", &data)],
    )?;
    // The GPU-path and MPI stages share one build of sce-train.
    let features = if mpi { "wgpu,mpi" } else { "wgpu" };
    gpu_path::run(&data, features)?;
    if mpi {
        mpi::run(&data, features)?;
    }
    eprintln!(
        "\nci passed in {:.1} min",
        start.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// The R18-CIFAR training step of docs/benchmarks.md.
const R18_STEP: [&str; 7] = [
    "bench",
    "step",
    "--model",
    "resnet18-cifar",
    "--batch",
    "64",
    "--json",
];

fn bench(args: &[String]) -> anyhow::Result<()> {
    let data = data_dir()?;
    let samples = format!("{data}/samples");
    anyhow::ensure!(
        Path::new(&samples).is_dir(),
        "the augmentation benchmarks read real photos from {samples} (ImageNet samples); \
         point SCE_DATA_DIR at a folder with samples/"
    );
    step(
        "build",
        "cargo",
        &["build", "--release", "-p", "sce-train"],
        &[],
    )?;
    let bin = target_dir().join("release/sce-train");
    let bin = bin.to_str().context("non-UTF-8 path")?;
    let mut runs: Vec<Vec<&str>> = vec![
        vec!["bench", "augment", "--pipeline", "cifar-asym", "--json"],
        vec![
            "bench",
            "augment",
            "--pipeline",
            "imagenet-2crop",
            "--images",
            &samples,
            "--json",
        ],
        vec![
            "bench",
            "augment",
            "--pipeline",
            "imagenet-multicrop",
            "--images",
            &samples,
            "--json",
        ],
        R18_STEP.to_vec(),
        vec![
            "bench",
            "trunk",
            "--model",
            "resnet18-cifar",
            "--batch",
            "64",
            "--json",
        ],
    ];
    if args.iter().any(|a| a == "--full") {
        runs.push(vec![
            "bench", "step", "--model", "resnet50", "--batch", "16", "--json",
        ]);
    }
    for run in runs {
        step(&run[..3].join(" "), bin, &run, &[])?;
    }
    // The same R18 step on Burn's own batch norms, then on Burn's own convolutions too: the
    // before/after of docs/benchmarks.md, in the same sitting.
    step(
        "bench step with SCE_NORM=burn",
        bin,
        &R18_STEP,
        &[("SCE_NORM", "burn")],
    )?;
    step(
        "bench step with SCE_CONV=burn SCE_NORM=burn",
        bin,
        &R18_STEP,
        &[("SCE_CONV", "burn"), ("SCE_NORM", "burn")],
    )?;
    match std::env::var("TORCH_PYTHON") {
        Ok(python) => {
            let mut models = vec!["resnet18-cifar"];
            if args.iter().any(|a| a == "--full") {
                models.push("resnet50");
            }
            for model in models {
                let batch = if model == "resnet50" { "16" } else { "64" };
                step(
                    "PyTorch baseline",
                    &python,
                    &[
                        "docs/baselines/torch_step.py",
                        "--model",
                        model,
                        "--batch",
                        batch,
                        "--steps",
                        "3",
                    ],
                    &[],
                )?;
            }
        }
        Err(_) => eprintln!(
            "\n==> PyTorch baseline: skipped; set TORCH_PYTHON to a Python with torch and \
             torchvision to run docs/baselines/torch_step.py in the same sitting"
        ),
    }
    Ok(())
}

/// `cargo xtask bench --gpu wgpu|cuda`: the GPU set of docs/benchmarks.md, in f32 and f16 on
/// the same device in the same sitting — `check` in both precisions, the R18-CIFAR step at the
/// CIFAR recipe's batch 256, and one epoch of the CIFAR-stem ResNet-18 on Fashion-MNIST
/// (`configs/fashion-mnist.toml`) from the real data.
fn bench_gpu(backend: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        backend == "wgpu" || backend == "cuda",
        "--gpu takes wgpu or cuda, not `{backend}`"
    );
    let data = data_dir()?;
    step(
        "build",
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "sce-train",
            "--features",
            backend,
        ],
        &[],
    )?;
    let bin = target_dir().join("release/sce-train");
    let bin = bin.to_str().context("non-UTF-8 path")?;
    let runs = target_dir().join("bench-gpu");
    for precision in ["f32", "f16"] {
        step(
            &format!("check in {precision}"),
            bin,
            &["check", "--device", backend, "--precision", precision],
            &[],
        )?;
        step(
            &format!("bench step in {precision}"),
            bin,
            &[
                "bench",
                "step",
                "--model",
                "resnet18-cifar",
                "--batch",
                "256",
                "--steps",
                "20",
                "--device",
                backend,
                "--precision",
                precision,
                "--json",
            ],
            &[],
        )?;
        let output = runs.join(precision);
        if output.exists() {
            std::fs::remove_dir_all(&output)?;
        }
        step(
            &format!("one CIFAR-stem epoch in {precision}"),
            bin,
            &[
                "pretrain",
                "--config",
                "configs/fashion-mnist.toml",
                "--epochs",
                "1",
                "--device",
                backend,
                "--precision",
                precision,
                "--data-dir",
                &data,
                "--output",
                output.to_str().context("non-UTF-8 path")?,
                "--json",
            ],
            &[],
        )?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") if args.get(1).map(String::as_str) == Some("--gpu") => {
            bench_gpu(args.get(2).map_or("", String::as_str))
        }
        Some("bench") => bench(&args[1..]),
        Some("gpu-path") => data_dir().and_then(|data| gpu_path::run(&data, "wgpu")),
        _ => Err(anyhow::anyhow!(
            "usage: cargo xtask ci | cargo xtask gpu-path | cargo xtask bench [--full] | \
             cargo xtask bench --gpu wgpu|cuda"
        )),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
