//! `training.png`: loss, learning rate and accuracy (kNN, online probe) per epoch (plotters, drawn into a
//! buffer and encoded with `image`); unlabelled where no font is found ([`crate::report::font`]).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::state::EpochRow;

/// One named curve of a panel.
struct Curve<'a> {
    name: &'a str,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    curves: &[Curve],
    labelled: bool,
) -> anyhow::Result<()> {
    let all: Vec<(f64, f64)> = curves.iter().flat_map(|c| c.points.clone()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let x1 = x1.max(x0 + 1.0);
    let (mut y0, mut y1) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    if (y1 - y0).abs() < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = (y1 - y0) * 0.05;
    let mut builder = ChartBuilder::on(area);
    builder.margin(10);
    if labelled {
        builder
            .caption(title, ("sans-serif", 18))
            .x_label_area_size(30)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
    let mut mesh = chart.configure_mesh();
    if labelled {
        mesh.x_desc("epoch");
    } else {
        mesh.disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0);
    }
    mesh.draw()?;
    for curve in curves.iter().filter(|c| !c.points.is_empty()) {
        let color = curve.color;
        chart
            .draw_series(LineSeries::new(
                curve.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(curve.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(
            curve
                .points
                .iter()
                .map(|&p| Circle::new(p, 3, color.filled())),
        )?;
    }
    if labelled && curves.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    Ok(())
}

/// Draws the three panels side by side into `path`.
pub fn plot_history(
    path: &Path,
    rows: &[EpochRow],
    knn_initial: Option<f64>,
) -> anyhow::Result<()> {
    let (width, height) = (1200u32, 360u32);
    let mut buffer = vec![0u8; (width * height * 3) as usize];
    let labelled = crate::report::font::sans_serif();
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 3));
        let series = |f: &dyn Fn(&EpochRow) -> Option<f64>| -> Vec<(f64, f64)> {
            rows.iter()
                .filter_map(|r| f(r).map(|v| (r.epoch as f64, v)))
                .collect()
        };
        let curve = |name, points, color| Curve {
            name,
            points,
            color,
        };
        panel(
            &panels[0],
            "training loss",
            &[curve("loss", series(&|r| Some(r.loss)), BLUE)],
            labelled,
        )?;
        panel(
            &panels[1],
            "learning rate (end of epoch)",
            &[curve("lr", series(&|r| Some(r.lr)), RED)],
            labelled,
        )?;
        let mut knn: Vec<(f64, f64)> = knn_initial.map(|v| (0.0, v)).into_iter().collect();
        knn.extend(series(&|r| r.knn_top1));
        let accuracy = [
            curve("kNN", knn, GREEN),
            curve("probe (test)", series(&|r| r.probe_top1), MAGENTA),
            curve(
                "probe (train batches)",
                series(&|r| r.probe_train_top1),
                RGBColor(230, 140, 0),
            ),
        ];
        let title = if accuracy[1..].iter().all(|c| c.points.is_empty()) {
            "kNN top-1 (%)"
        } else {
            "top-1 (%)"
        };
        panel(&panels[2], title, &accuracy, labelled)?;
        root.present()?;
    }
    let image = image::RgbImage::from_raw(width, height, buffer).context("plot buffer size")?;
    let tmp = path.with_extension("png.tmp");
    image
        .save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
