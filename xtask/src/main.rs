//! Project chores: `cargo xtask ci` (what CI runs), `cargo xtask bench` (benchmark figures).

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

/// The real-data folder: `$SCE_DATA_DIR`, else `../shared/data` beside the checkout.
fn data_dir() -> anyhow::Result<String> {
    let dir = match std::env::var_os("SCE_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("../shared/data"),
    };
    let fmnist = dir.join("fashion-mnist");
    if !fmnist.is_dir() {
        bail!(
            "real data is missing: {} does not exist. CI needs ../shared/data beside the \
             checkout (or SCE_DATA_DIR pointing at a folder with fashion-mnist/, mnist/, samples/)",
            fmnist.display()
        );
    }
    Ok(dir.canonicalize()?.display().to_string())
}

fn ci() -> anyhow::Result<()> {
    let start = Instant::now();
    let data = data_dir()?;
    step("format", "cargo", &["fmt", "--all", "--check"], &[])?;
    // One check build covers clippy on every target and the GPU code paths: `cuda` needs
    // DOCS_RS=1 offline (its build script would download LLVM), `wgpu` builds as is.
    step(
        "clippy (flex + wgpu + cuda type-check)",
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            "sce-train/wgpu,sce-train/cuda",
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
    eprintln!(
        "\nci passed in {:.1} min",
        start.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    let data = data_dir()?;
    let samples = format!("{data}/samples");
    step(
        "build",
        "cargo",
        &["build", "--release", "-p", "sce-train"],
        &[],
    )?;
    let bin = workspace_root().join("target/release/sce-train");
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
        vec![
            "bench",
            "step",
            "--model",
            "resnet18-cifar",
            "--batch",
            "64",
            "--json",
        ],
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
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench(&args[1..]),
        _ => Err(anyhow::anyhow!(
            "usage: cargo xtask ci | cargo xtask bench [--full]"
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
