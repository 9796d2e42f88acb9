//! The MPI stage of `cargo xtask ci`: data-parallel pretraining across two processes under
//! Open MPI, on the CPU (tests/distributed.rs; docs/distributed.md).

use std::process::Command;

use anyhow::Context;

use crate::step;

/// Debian's Open MPI and what the `mpi` crate's bindings are generated with.
const PACKAGES: [&str; 3] = ["openmpi-bin", "libopenmpi-dev", "libclang-dev"];

/// Whether Open MPI's launcher and library are here (`mpirun`, and `mpicc` that the `mpi`
/// crate's build asks for the flags).
fn present() -> bool {
    ["mpirun", "mpicc"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

/// Makes Open MPI available when it may (CI, as root), and says whether the stage can run;
/// when it cannot, says why in one line.
pub fn prepare() -> anyhow::Result<bool> {
    if present() {
        return Ok(true);
    }
    if !crate::gpu_path::may_install() {
        eprintln!(
            "\n==> MPI: skipped, no Open MPI here; install it (Debian: `apt-get install {}`) or \
             run as root with CI=true to have xtask install it",
            PACKAGES.join(" ")
        );
        return Ok(false);
    }
    crate::gpu_path::apt_install(&PACKAGES)?;
    anyhow::ensure!(
        present(),
        "installed {} but found no mpirun and mpicc",
        PACKAGES.join(" ")
    );
    Ok(true)
}

/// Two ranks against one process with two devices, SyncBatchNorm against one device with the
/// global batch, and a killed rank resumed.
pub fn run(data: &str, features: &str) -> anyhow::Result<()> {
    step(
        "MPI: two ranks on the CPU",
        "cargo",
        &[
            "test",
            "-p",
            "sce-train",
            "--features",
            features,
            "--test",
            "distributed",
        ],
        &[("SCE_DATA_DIR", data)],
    )
    .context("the MPI stage")
}
