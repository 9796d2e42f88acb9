//! What a training session writes for a user to look at while it runs: TensorBoard scalars
//! and pictures, `augmentations.png` and `embedding_map.png`. None of it may end a run: a
//! failure is said once and turns that output off for the session.

use std::path::PathBuf;

use burn::tensor::Tensor;
use image::RgbImage;

use super::embedding_map::{MIN_POINTS, map_of};
use super::tensorboard::EventWriter;
use crate::console::Console;

/// File name of the augmentation grid in a run directory.
pub const AUGMENTATIONS_PNG: &str = "augmentations.png";
/// File name of the latest embedding map in a run directory.
pub const EMBEDDING_MAP_PNG: &str = "embedding_map.png";

pub struct RunLog {
    dir: PathBuf,
    events: Option<EventWriter>,
    embedding_map: bool,
    seed: u64,
    console: Console,
}

impl RunLog {
    /// Opens a new event file in `dir` when `tensorboard` is on. `resumed_at`: the step a
    /// resumed session starts from, so TensorBoard drops what the last session logged after it.
    pub fn open(
        dir: PathBuf,
        config: &crate::config::ReportSection,
        seed: u64,
        resumed_at: Option<usize>,
        console: Console,
    ) -> Self {
        let mut log = Self {
            events: None,
            embedding_map: config.embedding_map,
            seed,
            console,
            dir,
        };
        if config.tensorboard {
            match EventWriter::create(&log.dir) {
                Ok(writer) => log.events = Some(writer),
                Err(e) => log.warn("TensorBoard events", e),
            }
            if let Some(step) = resumed_at {
                log.events_do(|w| w.session_start(step));
            }
        }
        log
    }

    fn warn(&self, what: &str, error: anyhow::Error) {
        self.console.line(format!(
            "warning: {what} turned off for this session: {error:#}"
        ));
    }

    fn events_do(&mut self, write: impl FnOnce(&mut EventWriter) -> anyhow::Result<()>) {
        if let Some(writer) = &mut self.events
            && let Err(e) = write(writer).and_then(|()| writer.flush())
        {
            self.events = None;
            self.warn("TensorBoard events", e);
        }
    }

    /// Scalars at `step` (non-finite values are left out).
    pub fn scalars(&mut self, step: usize, values: &[(&str, f64)]) {
        self.events_do(|w| w.scalars(step, values));
    }

    /// A picture kept in the run directory as `file` and logged to TensorBoard as `tag`.
    pub fn picture(&mut self, step: usize, file: &str, tag: &str, picture: &RgbImage) {
        if let Err(e) = super::write_png(&self.dir.join(file), picture) {
            self.console.line(format!("warning: {e:#}"));
        }
        self.events_do(|w| w.image(step, tag, picture));
    }

    /// The t-SNE map of a kNN evaluation's test embeddings (`features` L2-normalised).
    pub fn embedding_map(
        &mut self,
        step: usize,
        epoch: usize,
        features: &Tensor<2>,
        labels: &[usize],
        class_names: &[String],
        knn_top1: f64,
    ) {
        if !self.embedding_map {
            return;
        }
        let [n, dim] = features.dims();
        if n < MIN_POINTS {
            return;
        }
        let started = std::time::Instant::now();
        let flat: Vec<f32> = match features.to_data().convert::<f32>().try_into_vec::<f32>() {
            Ok(flat) => flat,
            Err(e) => return self.warn("the embedding map", anyhow::anyhow!("{e:?}")),
        };
        let labels: Vec<Option<usize>> = labels.iter().copied().map(Some).collect();
        let title = |shown| {
            format!("t-SNE of {shown} test embeddings, epoch {epoch} (kNN top-1 {knn_top1:.2}%)")
        };
        match map_of(&flat, dim, &labels, class_names, title, self.seed) {
            Ok(map) => {
                self.picture(step, EMBEDDING_MAP_PNG, "embedding_map", &map);
                self.scalars(
                    step,
                    &[("time/embedding_map_s", started.elapsed().as_secs_f64())],
                );
            }
            Err(e) => {
                self.embedding_map = false;
                self.warn("the embedding map", e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReportSection;

    /// A run directory that cannot be written (here: gone) costs the run its pictures and
    /// events, never the run: every call returns, and the event writer is dropped once.
    #[test]
    fn write_errors_turn_outputs_off_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let mut log = RunLog::open(
            gone.clone(),
            &ReportSection::default(),
            0,
            Some(5),
            Console { quiet: true },
        );
        assert!(log.events.is_none());
        log.scalars(6, &[("train/loss", 1.0)]);
        log.picture(6, "x.png", "x", &RgbImage::new(2, 2));
        assert!(!gone.exists());

        // Writable: the events are there, and a broken map turns only the maps off.
        let mut log = RunLog::open(
            dir.path().to_path_buf(),
            &ReportSection::default(),
            0,
            None,
            Console { quiet: true },
        );
        assert!(log.events.is_some());
        let device = burn::tensor::Device::default();
        let nan = Tensor::<2>::full([20, 4], f32::NAN, &device);
        log.embedding_map(1, 1, &nan, &[0; 20], &[], 10.0);
        assert!(!log.embedding_map && log.events.is_some());
        assert!(!dir.path().join(EMBEDDING_MAP_PNG).exists());
    }
}
