//! The command line's contract: the subcommands exist, and user mistakes give one clear error
//! naming the problem, a non-zero exit code and no panic.

mod common;

use common::{assert_clean_failure, sce_train, stdout};

#[test]
fn help_lists_the_subcommands() {
    let out = sce_train().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = stdout(&out);
    for command in [
        "pretrain", "linear", "knn", "preview", "embed", "bench", "export", "check", "fetch",
    ] {
        assert!(help.contains(command), "--help lacks `{command}`:\n{help}");
    }
}

#[test]
fn unknown_config_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(common::root().join("configs/tiny.toml"))
        .unwrap()
        .replace("lambda = 0.5", "lambda = 0.5\nlamda = 0.3");
    std::fs::write(&config, text).unwrap();
    let out = sce_train()
        .args(["pretrain", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    assert_clean_failure(
        &out,
        2,
        &["bad.toml", "method.lamda", "unknown field", "lambda"],
    );
    assert!(
        !dir.path().join("run").exists(),
        "no run directory for an invalid config"
    );
}

#[test]
fn missing_config_file_is_named() {
    let out = sce_train()
        .args(["pretrain", "--config", "configs/does-not-exist.toml"])
        .output()
        .unwrap();
    assert_clean_failure(
        &out,
        2,
        &["configs/does-not-exist.toml", "cannot read config file"],
    );
}

/// `pretrain` on the tiny config with extra arguments.
fn tiny(extra: &[&str]) -> std::process::Output {
    sce_train()
        .args(["pretrain", "--config", "configs/tiny.toml"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn bad_override_values_are_named() {
    // Out of range: validated after loading.
    let out = tiny(&["--set", "method.lambda=1.5"]);
    assert_clean_failure(&out, 2, &["method.lambda", "1.5", "[0, 1]"]);
    // Wrong type: rejected while deserialising, with the key and its origin.
    let out = tiny(&["--set", "run.epochs=many"]);
    assert_clean_failure(&out, 2, &["run.epochs", "command line"]);
    // A precision that is not one of the three, in the file or on the command line.
    let out = tiny(&["--set", "run.precision=fp16"]);
    assert_clean_failure(&out, 2, &["run.precision", "fp16", "f32", "f16", "bf16"]);
    let out = tiny(&["--precision", "f64"]);
    assert_clean_failure(&out, 2, &["--precision", "f64", "f16"]);
    // Divisibility: the queue must take whole batches of keys.
    let out = tiny(&["--set", "method.queue_size=1000"]);
    assert_clean_failure(&out, 2, &["method.queue_size", "multiple"]);
    // A key the chosen pairing would ignore is refused, not silently recorded.
    let out = tiny(&["--set", "method.global_views=3"]);
    assert_clean_failure(&out, 2, &["method.global_views", "asymmetric"]);
    // Malformed override.
    let out = tiny(&["--set", "noequals"]);
    assert_clean_failure(&out, 2, &["section.key=value"]);
    // Normalisation that would divide by zero or carry NaN into the first step.
    let out = tiny(&["--set", "augment.mean=[0.5]", "--set", "augment.std=[0.0]"]);
    assert_clean_failure(&out, 2, &["augment.std", "> 0"]);
    let out = tiny(&["--set", "augment.mean=[nan]", "--set", "augment.std=[0.3]"]);
    assert_clean_failure(&out, 2, &["augment.mean", "finite"]);
    let out = tiny(&[
        "--set",
        "augment.mean=[0.5]",
        "--set",
        "augment.std=[0.3, 0.3]",
    ]);
    assert_clean_failure(&out, 2, &["augment.std", "one per channel"]);
}

/// Evaluation options follow the configuration's rules: a zero k, a zero or non-finite
/// temperature, zero epochs or limits are refused before anything runs.
#[test]
fn evaluation_options_are_validated() {
    for (args, needle) in [
        (&["knn", "--k", "0"][..], "--k"),
        (&["knn", "--temperature", "0"][..], "--temperature"),
        (&["knn", "--temperature", "nan"][..], "--temperature"),
        (&["knn", "--bank-limit", "0"][..], "--bank-limit"),
        (&["linear", "--epochs", "0"][..], "--epochs"),
        (&["linear", "--limit-test", "0"][..], "--limit-test"),
        (&["linear", "--lr=-1"][..], "--lr"),
        (
            &["embed", "--top", "0", "--input", "x", "--output", "y"][..],
            "--top",
        ),
    ] {
        let out = sce_train()
            .args(args)
            .args(["--checkpoint", "/nonexistent/run"])
            .output()
            .unwrap();
        assert_clean_failure(&out, 2, &[needle]);
    }
}

/// `data.channels` that disagrees with the images is refused at start-up, not after
/// training when evaluation rebuilds the network.
#[test]
fn channels_that_disagree_with_the_data_are_refused() {
    let Some(data) = common::data_dir("channels_that_disagree_with_the_data") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = sce_train()
        .args([
            "pretrain",
            "--config",
            "configs/tiny.toml",
            "--set",
            "data.channels=3",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--output")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    assert_clean_failure(&out, 2, &["data.channels", "1 channel"]);
    assert!(!dir.path().join("run").exists(), "no run directory");
}

#[test]
fn devices_that_are_not_compiled_in_are_refused() {
    if cfg!(feature = "cuda") {
        return;
    }
    let out = tiny(&["--device", "cuda:0"]);
    assert_clean_failure(&out, 2, &["cuda", "feature"]);
}

#[test]
fn unknown_subcommand_arguments_are_usage_errors() {
    let out = sce_train()
        .args(["knn", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = sce_train()
        .args(["knn", "--checkpoint", "/nonexistent/run"])
        .output()
        .unwrap();
    assert_clean_failure(&out, 2, &["/nonexistent/run", "not a run directory"]);
}

/// Global options work before or after the subcommand; pretraining options before another
/// subcommand are refused rather than silently ignored.
#[test]
fn global_options_go_either_side_of_the_subcommand() {
    for args in [
        &["--device", "tpu", "knn", "--checkpoint", "/nonexistent/run"][..],
        &["knn", "--checkpoint", "/nonexistent/run", "--device", "tpu"][..],
    ] {
        let out = sce_train().args(args).output().unwrap();
        assert_clean_failure(&out, 2, &["unknown device `tpu`"]);
    }
    let out = sce_train()
        .args(["--epochs", "3", "knn", "--checkpoint", "/nonexistent/run"])
        .output()
        .unwrap();
    assert_clean_failure(&out, 2, &["pretraining options", "after `pretrain`"]);
}

/// `check` runs every numerical case on the chosen device and reports each in one JSON line.
#[test]
fn check_reports_every_case_on_the_cpu() {
    let out = sce_train()
        .args(["check", "--device", "cpu", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), sce_train::check::CASES.len());
    for check in checks {
        assert_eq!(check["passed"], true, "{check}");
        assert!(check["max_error"].as_f64().unwrap() <= check["tolerance"].as_f64().unwrap());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all_passed = format!("all {} checks passed", sce_train::check::CASES.len());
    assert!(
        stderr.contains("batch norm") && stderr.contains(&all_passed),
        "{stderr}"
    );
    // The CPU sums long rows right in one pass, so training keeps Burn's reductions.
    assert!(
        stderr.contains("one-pass mean over long rows (4 × 100,352) is exact"),
        "{stderr}"
    );
    assert!(!stderr.contains("short passes"), "{stderr}");
    assert_eq!(report["one_pass_reductions"].as_array().unwrap().len(), 2);
    // Burn's top-k is right on the CPU at every length and k the probe tries.
    let top_k = report["one_pass_top_k"].as_array().unwrap();
    assert_eq!(top_k.len(), 24, "{report}");
    assert!(top_k.iter().all(|p| p["device_right"] == true), "{report}");
    assert!(
        stderr.contains("one-pass top-k of rows of 2,000 is right for every k tried"),
        "{stderr}"
    );
}

/// A mistyped implementation switch is refused by name, not silently replaced by the default.
#[test]
fn unknown_switch_values_are_named() {
    for (name, value, accepted) in [
        ("SCE_CONV", "gemmm", "gemm, burn"),
        ("SCE_NORM", "fussed", "fused, burn"),
        ("SCE_REDUCTIONS", "shrt", "short, fused"),
    ] {
        let out = sce_train()
            .args(["check", "--device", "cpu"])
            .env(name, value)
            .output()
            .unwrap();
        assert_clean_failure(&out, 1, &[name, value, accepted]);
    }
}

/// Serves the files of `dir` on 127.0.0.1 (never the network); returns the base URL.
fn serve_folder(dir: &std::path::Path) -> String {
    let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let path = dir.join(request.url().trim_start_matches('/'));
            let response = match std::fs::read(&path) {
                Ok(bytes) => tiny_http::Response::from_data(bytes),
                Err(_) => tiny_http::Response::from_data(Vec::new()).with_status_code(404),
            };
            let _ = request.respond(response);
        }
    });
    format!("http://127.0.0.1:{port}/")
}

/// `fetch` downloads (checksums verified) into the user cache, where the next `fetch` finds
/// it; with downloads off and no data it says what to put where, in one error.
#[test]
fn fetch_fills_the_user_cache_and_explains_when_it_cannot() {
    let Some(data) = common::data_dir("fetch_fills_the_user_cache") else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let fetch = |extra: &[(&str, &str)]| {
        let mut cmd = sce_train();
        cmd.args(["fetch", "mnist", "--json"])
            .env_remove("SCE_DATA_DIR")
            .env("XDG_CACHE_HOME", cache.path())
            .envs(extra.iter().copied());
        cmd.output().unwrap()
    };
    let mirror = serve_folder(&data.join("mnist"));
    let out = fetch(&[("SCE_DATA_MIRROR", mirror.as_str())]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let expected = cache.path().join("sce-rs/mnist");
    let listed: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(listed[0]["path"], expected.to_str().unwrap());
    assert!(expected.join("t10k-labels-idx1-ubyte.gz").is_file());
    // Found there next time, even with downloads off.
    let out = fetch(&[("SCE_DATA_DOWNLOAD", "0")]);
    assert!(out.status.success(), "{}", common::stderr(&out));

    std::fs::remove_dir_all(&expected).unwrap();
    let out = fetch(&[("SCE_DATA_DOWNLOAD", "0")]);
    assert_clean_failure(&out, 1, &["mnist not found", "t10k-images-idx3-ubyte.gz"]);
    assert_eq!(common::stderr(&out).lines().count(), 1, "one line");
}

/// `preview` draws the configured augmentation: on the quick start's training set (the weak and
/// strong views of the small-dataset recipe), and on an image folder with the multi-crop recipe
/// (two global and four local crops). A folder that does not exist is named.
#[test]
fn preview_draws_the_configured_views() {
    let Some(data) = common::data_dir("preview_draws_the_configured_views") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let quickstart = dir.path().join("quickstart.png");
    let out = sce_train()
        .args(["preview", "--json", "--data-dir"])
        .arg(&data)
        .arg("--output")
        .arg(&quickstart)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report = common::json_line(&out);
    assert_eq!(report["images"], 6);
    assert_eq!(
        report["views"],
        serde_json::json!(["weak view", "strong view"])
    );
    let picture = image::open(&quickstart).unwrap().to_rgb8();
    assert!(
        picture.height() > 6 * 96,
        "six rows: {:?}",
        picture.dimensions()
    );

    let folder = dir.path().join("folder.png");
    let out = sce_train()
        .args(["preview", "--json", "--images", "2"])
        .args(["--config", "configs/imagenet-multicrop.toml", "--input"])
        .arg(common::fashion_samples(&data))
        .arg("--output")
        .arg(&folder)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report = common::json_line(&out);
    assert_eq!(report["images"], 2);
    let views = report["views"].as_array().unwrap();
    assert_eq!(views.len(), 6, "{report}");
    assert_eq!(views[0], "global 1");
    assert_eq!(views[5], "local");
    let picture = image::open(&folder).unwrap().to_rgb8();
    assert!(
        picture.width() > 7 * 96,
        "source + six views: {:?}",
        picture.dimensions()
    );

    let out = sce_train()
        .args(["preview", "--input", "no/such/folder"])
        .output()
        .unwrap();
    assert_clean_failure(&out, 2, &["no/such/folder"]);
}

/// Started by a launcher as one of several MPI ranks, a build without the `mpi` feature says so
/// instead of training alone as if it were the only process.
#[cfg(not(feature = "mpi"))]
#[test]
fn an_mpi_launch_of_a_build_without_mpi_is_refused() {
    let out = sce_train()
        .args(["pretrain", "--config", "configs/tiny.toml"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert_clean_failure(&out, 2, &["one of 2 MPI ranks", "`mpi` feature"]);
}
