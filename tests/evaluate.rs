//! kNN, linear evaluation, embeddings and export on a checkpoint of `configs/tiny.toml`.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::{json_line, sce_train, stderr};

/// `sce-train <args> --checkpoint RUN` on the shared run; asserts success.
fn on_run(run: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = sce_train()
        .args(args)
        .arg("--checkpoint")
        .arg(run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

/// One tiny run shared by the tests of this file (trained on first use).
fn trained_run(data: &PathBuf) -> PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let run = dir.join("run");
        let out = sce_train()
            .args([
                "pretrain",
                "--config",
                "configs/tiny.toml",
                "-q",
                "--data-dir",
            ])
            .arg(data)
            .arg("--output")
            .arg(&run)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        run
    })
    .clone()
}

#[test]
fn knn_beats_chance_and_reports_baselines() {
    let Some(data) = common::data_dir("knn_beats_chance") else {
        return;
    };
    let run = trained_run(&data);
    let data = data.to_str().unwrap();
    let out = on_run(&run, &["knn", "--k", "20", "--json", "--data-dir", data]);
    let report = json_line(&out);
    // Ten balanced classes: chance is 10 %.
    assert!(
        report["trained"]["top1"].as_f64().unwrap() > 30.0,
        "{report}"
    );
    assert!(report["untrained"]["top1"].as_f64().is_some());
    assert!(report["raw_pixels"]["top1"].as_f64().unwrap() > 30.0);
    // Fashion-MNIST's pixels, centred, with few neighbours: the stronger of the two bars.
    assert!(
        report["raw_pixels_centred_k5"]["top1"].as_f64().unwrap()
            > report["raw_pixels"]["top1"].as_f64().unwrap() - 5.0,
        "{report}"
    );
    assert_eq!(report["bank"], 1024);
}

#[test]
fn linear_evaluation_writes_its_report() {
    let Some(data) = common::data_dir("linear_evaluation_writes_its_report") else {
        return;
    };
    let run = trained_run(&data);
    let data = data.to_str().unwrap();
    let linear = [
        "linear",
        "--epochs",
        "3",
        "--lr",
        "0.5",
        "--feature-bn",
        "--limit-train",
        "1024",
        "--limit-test",
        "500",
        "--json",
        "--data-dir",
        data,
    ];
    let out = on_run(&run, &linear);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("linear.json")).unwrap()).unwrap();
    assert_eq!(report, json_line(&out));
    // Chance is 10 %; three short epochs on a 16-step model clear it comfortably.
    assert!(report["top1"].as_f64().unwrap() > 15.0, "{report}");
    assert!(report["top5"].as_f64().unwrap() >= report["top1"].as_f64().unwrap());
    let csv = std::fs::read_to_string(run.join("linear.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "header + one row per epoch");
}

#[test]
fn embed_writes_embeddings_and_a_query_finds_itself_in_a_grid_and_a_map() {
    let Some(data) = common::data_dir("embed_writes_embeddings") else {
        return;
    };
    let run = trained_run(&data);
    let images = tempfile::tempdir().unwrap();
    let mut count = 0;
    for entry in std::fs::read_dir(common::fashion_samples(&data)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("fashionMNIST_") {
            std::fs::copy(&path, images.path().join(&name)).unwrap();
            count += 1;
        }
    }
    assert_eq!(count, 20);
    let query = images.path().join("fashionMNIST_07_6.png");
    let output = images.path().join("embeddings.safetensors");
    let grid = images.path().join("neighbours.png");
    let map = images.path().join("map.png");
    let out = on_run(
        &run,
        &[
            "embed",
            "--top",
            "3",
            "--json",
            "--input",
            images.path().to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--query",
            query.to_str().unwrap(),
            "--grid",
            grid.to_str().unwrap(),
            "--map",
            map.to_str().unwrap(),
        ],
    );
    let report = json_line(&out);
    assert_eq!(report["images"], 20);
    // The query and its three neighbours in one row of 128-pixel tiles; the map of all 20.
    let grid = image::open(&grid).unwrap().to_rgb8();
    assert_eq!(grid.width(), 4 * (128 + 6) + 6);
    // The first neighbour is the query itself: its tile holds the query's pixels.
    let tile = |x0: u32| -> Vec<u8> {
        (0..128)
            .flat_map(|y| (0..128).map(move |x| (x, y)))
            .map(|(x, y)| grid.get_pixel(x0 + x, 6 + y).0[0])
            .collect()
    };
    assert!(
        tile(6) == tile(6 + 134),
        "the first neighbour's tile is not the query's"
    );
    assert!(
        tile(6) != tile(6 + 2 * 134),
        "the second neighbour's tile is the query's"
    );
    assert_eq!(image::open(&map).unwrap().width(), 760);
    let first = &report["neighbours"][0];
    assert!(
        first["name"]
            .as_str()
            .unwrap()
            .ends_with("fashionMNIST_07_6.png"),
        "{report}"
    );
    assert!(first["similarity"].as_f64().unwrap() > 0.999);

    let bytes = std::fs::read(&output).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let embeddings = file.tensor("embeddings").unwrap();
    assert_eq!(
        embeddings.shape(),
        &[20, 32],
        "20 images × 8·width (4) features"
    );
    assert_eq!(file.tensor("labels").unwrap().shape(), &[20]);
}

/// The default export is torchvision-named: it loads through the torchvision importer into
/// exactly the weights of the Burn-named export (same features bit for bit), comes with a JSON
/// description, and `--heads` adds the projector under PyTorch's layout.
#[test]
fn export_writes_torchvision_names_that_load_back_exactly() {
    let Some(data) = common::data_dir("export_writes_torchvision_names") else {
        return;
    };
    let run = trained_run(&data);
    let dir = tempfile::tempdir().unwrap();
    let torch = dir.path().join("trunk.safetensors");
    let burn_names = dir.path().join("burn.safetensors");
    let out = on_run(
        &run,
        &[
            "export",
            "--output",
            torch.to_str().unwrap(),
            "--heads",
            "--json",
        ],
    );
    on_run(
        &run,
        &[
            "export",
            "--output",
            burn_names.to_str().unwrap(),
            "--format",
            "burn",
        ],
    );
    let info = json_line(&out);
    let described: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("trunk.json")).unwrap())
            .unwrap();
    assert_eq!(info, described, "stdout JSON equals trunk.json");
    assert_eq!(info["format"], "torchvision");
    assert_eq!(info["architecture"], "resnet18");
    assert_eq!(info["stem"], "cifar");
    assert_eq!(
        (info["width"].as_u64(), info["in_channels"].as_u64()),
        (Some(4), Some(1))
    );
    assert!(
        info["torchvision"].is_null(),
        "no torchvision ResNet is 4 wide"
    );
    assert_eq!(info["steps"], 16);
    assert_eq!(info["normalization"]["mean"].as_array().unwrap().len(), 1);
    assert!(
        info["predictor"].is_null(),
        "the tiny recipe has no predictor"
    );

    let device = burn::tensor::Device::default();
    let fresh = || {
        sce_model::ResNetConfig::new(sce_model::Depth::R18, sce_model::Stem::Cifar)
            .with_in_channels(1)
            .with_width(4)
            .init(&device)
            .unwrap()
    };
    let a = sce_model::weights::load_torchvision(fresh(), &torch, None).unwrap();
    let b = sce_model::weights::load_safetensors(fresh(), &burn_names).unwrap();
    let x = burn::tensor::Tensor::<4>::random(
        [3, 1, 28, 28],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let features = |t: &sce_model::ResNet| {
        t.forward(x.clone())
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(features(&a), features(&b));

    let bytes = std::fs::read(dir.path().join("trunk.projector.safetensors")).unwrap();
    let projector = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        projector.tensor("layers.0.linear.weight").unwrap().shape(),
        &[64, 32],
        "Linear weights as PyTorch's [out, in]"
    );
    assert!(
        projector
            .tensor("layers.0.norm.num_batches_tracked")
            .is_ok()
    );
}
