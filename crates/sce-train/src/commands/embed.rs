//! `sce-train embed`: a run's embeddings of a folder or dataset, with neighbours of a query.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use fast_image_resize::Resizer;
use sce_data::{Image, ImageSource, SkipLog};
use serde::Serialize;

use crate::atomic_file::write_atomic;
use crate::backend::parse_device;
use crate::config::TrainConfig;
use crate::eval::{FeatureSet, extract_features};
use crate::options::print_json;
use crate::options::{Common, at_least_one};
use crate::parts::{eval_transform, normalization, open_input};

use super::trained_trunk;

#[derive(Args, Debug)]
pub struct EmbedCmd {
    #[command(flatten)]
    pub common: Common,
    /// Run directory written by `pretrain`.
    #[arg(long, value_name = "RUN_DIR")]
    pub checkpoint: PathBuf,
    /// An image folder (class subfolders give labels), or a dataset name with an optional
    /// split: `fashion-mnist`, `cifar10:train`.
    #[arg(long, value_name = "DIR_OR_DATASET")]
    pub input: std::ffi::OsString,
    /// Where to write the embeddings (safetensors: `embeddings` [n, d], `labels` [n], image
    /// names in the metadata).
    #[arg(long, value_name = "FILE.safetensors")]
    pub output: PathBuf,
    /// Print the images nearest to this one.
    #[arg(long, value_name = "IMAGE")]
    pub query: Option<PathBuf>,
    /// How many neighbours `--query` prints.
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    pub top: usize,
    /// With --query: draw the query and its neighbours (similarity, name, label) as a PNG.
    #[arg(long, value_name = "FILE.png", requires = "query")]
    pub grid: Option<PathBuf>,
    /// A t-SNE map of the embeddings coloured by label, as a PNG (at most 2,000 images,
    /// evenly thinned).
    #[arg(long, value_name = "FILE.png")]
    pub map: Option<PathBuf>,
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    pub batch_size: usize,
}

#[derive(Serialize)]
struct Neighbour {
    rank: usize,
    #[serde(skip)]
    index: usize,
    name: String,
    label: Option<usize>,
    similarity: f32,
}

#[derive(Serialize)]
struct EmbedReport {
    #[serde(serialize_with = "crate::report::lossy_path")]
    output: PathBuf,
    images: usize,
    dim: usize,
    neighbours: Vec<Neighbour>,
}

impl EmbedCmd {
    fn source(&self, config: &TrainConfig) -> anyhow::Result<Arc<dyn ImageSource>> {
        open_input(&self.input, "test", config, &self.common)
    }

    pub fn run(&self) -> anyhow::Result<()> {
        let console = self.common.console();
        let device = parse_device(&self.common.device)?;
        let (config, trunk, _) = trained_trunk(&self.checkpoint, &device, &console)?;
        let source = self.source(&config)?;
        let transform = eval_transform(
            &config,
            normalization(&config, config.data.dataset, source.channels()),
        );
        console.line(format!("embedding {} images…", source.len()));
        let skip = SkipLog::new(
            config.data.skip_corrupt,
            Box::new(move |line| console.line(line)),
        );
        let FeatureSet {
            features,
            labels,
            indices: image_indices,
        } = extract_features(&source, &transform, self.batch_size, &device, &skip, &|x| {
            trunk.forward(x)
        })?
        .normalized();
        let [n, dim] = features.dims();
        let flat: Vec<f32> = features
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        let names: Vec<String> = image_indices.iter().map(|&i| source.item_name(i)).collect();
        let label_values: Vec<i64> = labels.iter().map(|l| l.map_or(-1, |v| v as i64)).collect();
        write_embeddings(&self.output, &flat, [n, dim], &label_values, &names)?;
        console.line(format!(
            "wrote {n} embeddings of dimension {dim} to {}",
            self.output.display()
        ));

        if let Some(path) = &self.map {
            write_map(
                path,
                &flat,
                dim,
                &labels,
                &source.class_names(),
                config.run.seed,
            )?;
            console.line(format!("wrote the embedding map to {}", path.display()));
        }

        let mut neighbours = Vec::new();
        if let Some(query) = &self.query {
            let image = Image::open(query, source.channels())?;
            let planes = transform.apply(&image, &mut Resizer::new());
            let q = Tensor::<4>::from_data(
                TensorData::new(
                    planes.data,
                    [1, planes.channels, planes.height, planes.width],
                ),
                &device,
            );
            let q = sce_model::l2_normalize(trunk.forward(q));
            let sims = q.matmul(features.transpose());
            let top = sce_ops::topk::top_k_rows(sims, self.top.min(n));
            crate::eval::note_host_ranking(&top);
            eprintln!("nearest to {}:", query.display());
            for (rank, (&i, &s)) in top.indices.iter().zip(&top.values).enumerate() {
                eprintln!("{:>3}. {:.4}  {}", rank + 1, s, names[i]);
                neighbours.push(Neighbour {
                    rank: rank + 1,
                    index: image_indices[i],
                    name: names[i].clone(),
                    label: labels[i],
                    similarity: s,
                });
            }
            if let Some(path) = &self.grid {
                let picture = retrieval_grid(&*source, query, &image, &neighbours)?;
                crate::report::write_png(path, &picture)?;
                console.line(format!(
                    "wrote the neighbours of the query to {}",
                    path.display()
                ));
            }
        }
        print_json(
            &self.common,
            &EmbedReport {
                output: self.output.clone(),
                images: n,
                dim,
                neighbours,
            },
        )
    }
}

/// The t-SNE map of `n` × `dim` embeddings, coloured by label, as a PNG.
fn write_map(
    path: &Path,
    flat: &[f32],
    dim: usize,
    labels: &[Option<usize>],
    class_names: &[String],
    seed: u64,
) -> anyhow::Result<()> {
    let title = |shown| format!("t-SNE of {shown} embeddings");
    let map = crate::report::embedding_map::map_of(flat, dim, labels, class_names, title, seed)
        .context("the embedding map")?;
    crate::report::write_png(path, &map)
}

/// The query beside its neighbours, each with rank, similarity, name and label.
fn retrieval_grid(
    source: &dyn ImageSource,
    query: &Path,
    image: &Image,
    neighbours: &[Neighbour],
) -> anyhow::Result<image::RgbImage> {
    use crate::report::grid::{Tile, draw, rgb_of};
    const COLUMNS: usize = 6;
    let class_names = source.class_names();
    let mut tiles = vec![Tile::new(
        rgb_of(image),
        ["query".to_string(), query.display().to_string()],
    )];
    for n in neighbours {
        let sample = source
            .get(n.index)
            .with_context(|| format!("reading {}", n.name))?;
        let mut caption = vec![
            format!("{}. similarity {:.3}", n.rank, n.similarity),
            n.name.clone(),
        ];
        caption.extend(n.label.map(|l| crate::report::class_label(&class_names, l)));
        tiles.push(Tile::new(rgb_of(&sample.image), caption));
    }
    let mut rows = Vec::new();
    let mut tiles = tiles.into_iter().peekable();
    while tiles.peek().is_some() {
        rows.push(tiles.by_ref().take(COLUMNS).collect());
    }
    draw(&rows, 128)
}

/// Writes embeddings, labels and names as one safetensors file, atomically.
fn write_embeddings(
    path: &Path,
    values: &[f32],
    shape: [usize; 2],
    labels: &[i64],
    names: &[String],
) -> anyhow::Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let label_bytes: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = vec![
        (
            "embeddings",
            TensorView::new(Dtype::F32, shape.to_vec(), &bytes)?,
        ),
        (
            "labels",
            TensorView::new(Dtype::I64, vec![labels.len()], &label_bytes)?,
        ),
    ];
    let metadata =
        std::collections::HashMap::from([("names".to_string(), serde_json::to_string(names)?)]);
    let data = safetensors::serialize(tensors, Some(metadata))?;
    write_atomic(path, &data).with_context(|| format!("cannot write {}", path.display()))
}
