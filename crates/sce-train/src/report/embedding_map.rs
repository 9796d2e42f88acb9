//! A 2-D map of embeddings coloured by class (solo-learn's automatic UMAP, here t-SNE): a run's
//! test embeddings at each kNN evaluation, and `embed --map`.
//!
//! The projection is Barnes-Hut t-SNE from the `bhtsne` crate (maintained, pure Rust, rayon).
//! No maintained pure-Rust UMAP crate with light dependencies was found (`annembed` pulls in
//! BLAS and Python bindings). The start is drawn from a seeded RNG, so a map is reproducible
//! up to the order of rayon's parallel sums.

use anyhow::{Context, ensure};
use image::RgbImage;
use plotters::prelude::*;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

/// Points mapped at most: t-SNE's cost grows with N log N per iteration; 2,000 points take a
/// few seconds on 2 cores. Larger sets are thinned evenly (which keeps class proportions of
/// test splits stored class by class).
pub const MAX_POINTS: usize = 2000;

/// Fewer points than this make no map worth looking at.
pub const MIN_POINTS: usize = 10;

const ITERATIONS: usize = 750;

/// Row indices of an `n`-row set kept for the map: all, or `max` evenly spaced.
pub fn thin(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|i| i * n / max).collect()
}

/// t-SNE of `rows` (row-major, `dim` columns; Euclidean distance) into 2-D, row-major.
pub fn tsne(rows: &[f32], dim: usize, seed: u64) -> anyhow::Result<Vec<[f32; 2]>> {
    ensure!(
        dim > 0 && rows.len().is_multiple_of(dim),
        "embeddings of {dim} values do not divide {} values",
        rows.len()
    );
    let n = rows.len() / dim;
    ensure!(
        n >= MIN_POINTS,
        "an embedding map needs at least {MIN_POINTS} images, got {n}"
    );
    ensure!(
        rows.iter().all(|v| v.is_finite()),
        "the embeddings hold NaN or infinite values"
    );
    let samples: Vec<&[f32]> = rows.chunks(dim).collect();
    // bhtsne asserts n - 1 >= 3 * perplexity; 30 is the usual choice.
    let perplexity = (((n - 1) / 3) as f32).min(30.0);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1e-4).expect("a valid normal");
    let start: Vec<f32> = (0..2 * n).map(|_| normal.sample(&mut rng)).collect();
    let mut fit = bhtsne::tSNE::<f32, &[f32], 2>::new(&samples);
    fit.perplexity(perplexity)
        .epochs(ITERATIONS)
        .initial_embedding(start)
        .barnes_hut(0.5, |a, b| {
            a.iter()
                .zip(b.iter())
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
                .sqrt()
        });
    let flat = fit.embedding();
    ensure!(
        flat.len() == 2 * n && flat.iter().all(|v| v.is_finite()),
        "t-SNE produced no usable map"
    );
    Ok(flat.chunks(2).map(|p| [p[0], p[1]]).collect())
}

/// The map of a set of embeddings (`flat`: one row of `dim` values per label): thinned to
/// [`MAX_POINTS`], projected, drawn. `title` is told how many points the map shows.
pub fn map_of(
    flat: &[f32],
    dim: usize,
    labels: &[Option<usize>],
    class_names: &[String],
    title: impl FnOnce(usize) -> String,
    seed: u64,
) -> anyhow::Result<RgbImage> {
    ensure!(
        flat.len() == labels.len() * dim,
        "{} embeddings of {dim} values do not make {} values",
        labels.len(),
        flat.len()
    );
    let keep = thin(labels.len(), MAX_POINTS);
    let rows: Vec<f32> = keep
        .iter()
        .flat_map(|&i| flat[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    let kept: Vec<Option<usize>> = keep.iter().map(|&i| labels[i]).collect();
    let points = tsne(&rows, dim, seed)?;
    draw_map(&points, &kept, class_names, &title(keep.len()))
}

/// Matplotlib's `tab10` palette, then hues around the wheel for more classes.
fn class_color(class: usize, classes: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    if classes <= TAB10.len() {
        let (r, g, b) = TAB10[class % TAB10.len()];
        return RGBColor(r, g, b);
    }
    let hsl = HSLColor(class as f64 / classes as f64, 0.65, 0.5);
    let (r, g, b) = hsl.rgb();
    RGBColor(r, g, b)
}

/// Draws `points` coloured by `labels` (grey where unknown) with `title` above; a legend for
/// up to 20 classes (`names` gives their names, else "class k").
pub fn draw_map(
    points: &[[f32; 2]],
    labels: &[Option<usize>],
    names: &[String],
    title: &str,
) -> anyhow::Result<RgbImage> {
    ensure!(!points.is_empty(), "no points to draw");
    let (width, height) = (760u32, 640u32);
    let classes = labels.iter().flatten().max().map_or(0, |m| m + 1);
    let bound = |axis: usize| {
        let (lo, hi) = points.iter().fold((f32::MAX, f32::MIN), |(lo, hi), p| {
            (lo.min(p[axis]), hi.max(p[axis]))
        });
        let pad = ((hi - lo) * 0.04).max(1e-3);
        (lo - pad) as f64..(hi + pad) as f64
    };
    let labelled = super::font::sans_serif();
    let mut buffer = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let legend = labelled && (1..=20).contains(&classes);
        let (plot_area, legend_area) = root.split_horizontally(if legend { 620 } else { width });
        let mut builder = ChartBuilder::on(&plot_area);
        builder.margin(12);
        if labelled {
            builder.caption(title, ("sans-serif", 16));
        }
        let mut chart = builder.build_cartesian_2d(bound(0), bound(1))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()?;
        let grey = RGBColor(170, 170, 170);
        chart.draw_series(points.iter().zip(labels).map(|(p, label)| {
            let color = label.map_or(grey, |c| class_color(c, classes));
            Circle::new((p[0] as f64, p[1] as f64), 2, color.mix(0.8).filled())
        }))?;
        if legend {
            for class in 0..classes {
                let y = 40 + class as i32 * 22;
                let name = super::class_label(names, class);
                legend_area.draw(&Circle::new(
                    (10, y + 7),
                    5,
                    class_color(class, classes).filled(),
                ))?;
                legend_area.draw(&Text::new(name, (22, y), ("sans-serif", 13)))?;
            }
        }
        root.present().context("cannot draw the embedding map")?;
    }
    Ok(RgbImage::from_raw(width, height, buffer).expect("the buffer has the image's size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_evenly_spaced_rows() {
        assert_eq!(thin(5, 10), vec![0, 1, 2, 3, 4]);
        assert_eq!(thin(10, 5), vec![0, 2, 4, 6, 8]);
    }

    /// Three well-separated clusters stay separated: every point's nearest mapped neighbour
    /// belongs to its own cluster.
    #[test]
    fn separated_clusters_stay_separated() {
        let dim = 16;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let noise = Normal::new(0.0f32, 0.05).unwrap();
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..60 {
            let cluster = i % 3;
            labels.push(cluster);
            for d in 0..dim {
                let centre = if d == cluster { 1.0 } else { 0.0 };
                rows.push(centre + noise.sample(&mut rng));
            }
        }
        let points = tsne(&rows, dim, 0).unwrap();
        assert_eq!(points.len(), 60);
        for (i, p) in points.iter().enumerate() {
            let nearest = (0..points.len())
                .filter(|&j| j != i)
                .min_by(|&a, &b| {
                    let d = |q: &[f32; 2]| (q[0] - p[0]).powi(2) + (q[1] - p[1]).powi(2);
                    d(&points[a]).total_cmp(&d(&points[b]))
                })
                .unwrap();
            assert_eq!(labels[nearest], labels[i], "point {i}");
        }
        let labels: Vec<Option<usize>> = labels.into_iter().map(Some).collect();
        let map = draw_map(&points, &labels, &[], "test").unwrap();
        assert_eq!(map.dimensions(), (760, 640));
    }

    #[test]
    fn too_few_or_broken_embeddings_are_refused() {
        assert!(tsne(&[0.0; 8], 2, 0).is_err());
        let mut rows = vec![0.5f32; 40];
        rows[3] = f32::NAN;
        let error = tsne(&rows, 2, 0).unwrap_err().to_string();
        assert!(error.contains("NaN"), "{error}");
    }
}
