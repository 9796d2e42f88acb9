//! One epoch's steps, on one device or several, and what each step and the epoch's end record.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::anyhow;
use burn::data::dataloader::{DataLoader, Progress};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::train::train::MultiDevicesTrainStep;
use burn::train::{EventProcessorTraining, Interrupter, Learner, LearnerEvent, TrainingItem};
use indicatif::ProgressBar;
use sce_data::ViewLoader;

use super::probe::OnlineProbe;
use super::state::{EpochRow, TrainState};
use super::strategy::{Processor, SceStrategy};
use crate::eval::KnnEvaluation;
use crate::model::{ProbeInput, SceModel, SceOutput};

/// One optimizer step's outcome, whatever the number of devices.
struct StepDone {
    loss: f64,
    similarity: f64,
    /// Source images the step consumed (all devices).
    images: usize,
    probe: Option<ProbeInput>,
    /// Each device's output, for burn-train's event processor.
    items: Vec<SceOutput>,
    progress: Progress,
    /// Whether the ranks agreed to stop after this step (across processes, where a stop one
    /// rank sees alone would leave the others waiting).
    agreed_stop: Option<bool>,
}

/// What one epoch's loop updates.
struct EpochRun<'a> {
    state: &'a mut TrainState,
    processor: &'a mut Processor,
    interrupter: &'a Interrupter,
    bar: &'a ProgressBar,
    epoch: usize,
}

impl EpochRun<'_> {
    /// Bookkeeping after an optimizer step that consumed `images` source images.
    fn record(&mut self, loss: f64, similarity: f64, images: usize, seconds: f64) {
        let state = &mut *self.state;
        state.batch_in_epoch += 1;
        state.global_step += 1;
        state.epoch_loss_sum += loss;
        state.epoch_similarity_sum += similarity;
        state.epoch_batches += 1;
        state.epoch_seconds += seconds;
        state.train_seconds += seconds;
        state.train_images += images;
        self.bar.inc(1);
        self.bar.set_message(format!("loss {loss:.4}"));
    }

    /// One step of the online probe on the step's detached features, if it is on.
    fn probe(&mut self, probe: Option<&Mutex<OnlineProbe>>, input: Option<ProbeInput>) {
        if let (Some(probe), Some(input)) = (probe, input) {
            let (correct, seen) = probe.lock().unwrap().train_step(input);
            self.state.epoch_probe_correct += correct;
            self.state.epoch_probe_seen += seen;
        }
    }

    /// The loss scale of the next step: the f16 scaler's, else 1.
    fn loss_scale(&self) -> f64 {
        self.state.loss_scale.as_ref().map_or(1.0, |s| s.scale)
    }

    fn check_finite(&self, loss: f64, checkpoints: &std::path::Path) -> anyhow::Result<()> {
        if loss.is_finite() {
            return Ok(());
        }
        self.bar.finish_and_clear();
        Err(anyhow!(
            "the loss became {loss} at step {} (epoch {}, batch {}); training stopped without \
             saving this state — the last good checkpoint in {} is kept. Lower optim.lr or check \
             the data",
            self.state.global_step,
            self.epoch + 1,
            self.state.batch_in_epoch,
            checkpoints.display()
        ))
    }

    fn process(&mut self, item: SceOutput, progress: Progress, lr: ModuleLearningRate) {
        let item = TrainingItem::new(item, progress, Some(self.state.batch_in_epoch), Some(lr));
        self.interrupter.fail_on_error(
            self.processor
                .process_train(LearnerEvent::ProcessedItem(item)),
        );
    }
}

fn scalar(t: &burn::tensor::Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

impl SceStrategy {
    /// The step's figures for TensorBoard (with the loss scale the next step uses, in f16).
    fn log_step(&self, run: &EpochRun, loss: f64, similarity: f64, learner: &Learner<SceModel>) {
        let mut scalars = vec![
            ("train/loss", loss),
            ("train/positive_similarity", similarity),
            ("train/lr", learner.lr_current().base()),
        ];
        if let Some(scaler) = &run.state.loss_scale {
            scalars.push(("train/loss_scale", scaler.scale));
            scalars.push(("train/skipped_steps", scaler.skipped_steps as f64));
        }
        self.report
            .lock()
            .unwrap()
            .scalars(run.state.global_step, &scalars);
    }

    /// The step's gradients ready for the optimizer: in f16 unscaled, none at all when they
    /// overflowed (see [`LossScaler::unscale`]). Under MPI they are already averaged, so every
    /// rank decides alike.
    fn unscaled(
        &self,
        run: &mut EpochRun,
        grads: GradientsParams,
        learner: &Learner<SceModel>,
    ) -> anyhow::Result<GradientsParams> {
        match run.state.loss_scale.as_mut() {
            Some(scaler) => scaler.unscale(grads, &learner.model()),
            None => Ok(grads),
        }
    }

    /// The steps of epoch `epoch` (from the batch `state` is at), on one device or several.
    pub(super) fn train_epoch(
        &self,
        learner: &mut Learner<SceModel>,
        state: &mut TrainState,
        processor: &mut Processor,
        interrupter: &Interrupter,
        bar: &ProgressBar,
        epoch: usize,
    ) -> anyhow::Result<()> {
        let run = EpochRun {
            state,
            processor,
            interrupter,
            bar,
            epoch,
        };
        if self.devices.len() > 1 {
            self.train_epoch_multi(learner, run)
        } else {
            self.train_epoch_single(learner, run)
        }
    }

    /// One epoch on one device: a step per batch.
    fn train_epoch_single(
        &self,
        learner: &mut Learner<SceModel>,
        mut run: EpochRun,
    ) -> anyhow::Result<()> {
        let mut batches = self.loader.iter();
        let mut tick = Instant::now();
        while let Some(item) = batches.next() {
            let batch = item.map_err(|e| anyhow!("reading training data: {e}"))?;
            let progress = batches.progress();
            self.step_context
                .begin_step(run.state.global_step, run.loss_scale());
            let mut output = learner.train_step(batch);
            let mut loss = scalar(&output.item.loss);
            let mut similarity = scalar(&output.item.positive_similarity);
            let mut probe = output.item.probe.take();
            let mut agreed_stop = None;
            if self.ranks.is_distributed() {
                let stop = f64::from(u8::from(run.interrupter.should_stop()));
                let [mean_loss, mean_similarity, stops] =
                    self.ranks.mean_f64([loss, similarity, stop]);
                (loss, similarity) = (mean_loss, mean_similarity);
                agreed_stop = Some(stops > 0.0);
                if stops > 0.0 && !run.interrupter.should_stop() {
                    run.interrupter.stop(Some("another rank was interrupted"));
                }
                output.grads = self.ranks.average_gradients(output.grads, &learner.model());
                self.step_context
                    .gather_pending(|keys| self.ranks.gather_rows(keys));
                probe = probe.map(|input| self.ranks.gather_probe(input));
            }
            run.check_finite(loss, &self.run.checkpoints())?;
            let grads = self.unscaled(&mut run, output.grads, learner)?;
            learner.lr_step();
            learner.optimizer_step(grads);
            let step = StepDone {
                loss,
                similarity,
                images: self.batch_size * self.ranks.size,
                probe,
                items: vec![output.item],
                progress,
                agreed_stop,
            };
            if self.after_step(learner, &mut run, step, &mut tick) {
                break;
            }
        }
        Ok(())
    }

    /// One epoch on several devices with Burn's `MultiDevicesTrainStep`: each device runs the
    /// step on its shard's batch with its own copy of the model (its own batch statistics:
    /// Burn has no SyncBatchNorm); gradients are summed on the first device, where one
    /// optimizer step, the enqueue of every device's keys and the EMA happen.
    fn train_epoch_multi(
        &self,
        learner: &mut Learner<SceModel>,
        mut run: EpochRun,
    ) -> anyhow::Result<()> {
        let n = self.devices.len();
        let main = &self.devices[0];
        let shards: Vec<ViewLoader> = (0..n)
            .map(|d| self.loader.shard(d, n, &self.devices[d]))
            .collect();
        let mut iterators: Vec<_> = shards.iter().map(|s| s.iter()).collect();
        let workers = MultiDevicesTrainStep::<SceModel>::new(&self.devices);
        let mut tick = Instant::now();
        loop {
            let model = learner.model();
            self.step_context
                .begin_step(run.state.global_step, run.loss_scale());
            let (outputs, progress) = workers
                .step(iterators.as_mut_slice(), &model)
                .map_err(|e| anyhow!("multi-device step: {e}"))?;
            if outputs.is_empty() {
                break;
            }
            let count = outputs.len() as f64;
            let mut accumulator = GradientsAccumulator::new();
            let (mut loss, mut similarity) = (0.0, 0.0);
            let mut items = Vec::with_capacity(outputs.len());
            let mut probe_inputs = Vec::with_capacity(outputs.len());
            for mut out in outputs {
                loss += scalar(&out.output.item.loss) / count;
                similarity += scalar(&out.output.item.positive_similarity) / count;
                accumulator.accumulate(&model, out.output.grads.to_device(main, &model));
                probe_inputs.extend(out.output.item.probe.take());
                items.push(out.output.item);
            }
            run.check_finite(loss, &self.run.checkpoints())?;
            let grads = self.unscaled(&mut run, accumulator.grads(), learner)?;
            learner.lr_step();
            learner.optimizer_step(grads);
            let step = StepDone {
                loss,
                similarity,
                images: self.batch_size * n,
                probe: ProbeInput::gather(probe_inputs, main),
                items,
                progress,
                agreed_stop: None,
            };
            if self.after_step(learner, &mut run, step, &mut tick) {
                break;
            }
        }
        Ok(())
    }

    /// What follows every optimizer step, on one device or several: the probe's step on the
    /// step's features, the epoch's bookkeeping, the step's figures and burn-train's events.
    /// Returns whether the run was asked to stop.
    fn after_step(
        &self,
        learner: &Learner<SceModel>,
        run: &mut EpochRun,
        step: StepDone,
        tick: &mut Instant,
    ) -> bool {
        run.probe(self.probe.as_ref(), step.probe);
        let seconds = tick.elapsed().as_secs_f64();
        *tick = Instant::now();
        run.record(step.loss, step.similarity, step.images, seconds);
        self.log_step(run, step.loss, step.similarity, learner);
        for item in step.items {
            run.process(item, step.progress.clone(), learner.lr_current());
        }
        step.agreed_stop
            .unwrap_or_else(|| run.interrupter.should_stop())
    }

    /// The epoch's line of `metrics.csv`, from its sums and its evaluation.
    pub(super) fn epoch_row(
        &self,
        learner: &Learner<SceModel>,
        state: &TrainState,
        epoch: usize,
        evaluation: Option<&KnnEvaluation>,
    ) -> EpochRow {
        let batches = state.epoch_batches.max(1) as f64;
        let probe_train_top1 = (state.epoch_probe_seen > 0)
            .then(|| 100.0 * state.epoch_probe_correct as f64 / state.epoch_probe_seen as f64);
        EpochRow {
            epoch: epoch + 1,
            step: state.global_step,
            loss: state.epoch_loss_sum / batches,
            lr: learner.lr_current().base(),
            positive_similarity: state.epoch_similarity_sum / batches,
            knn_top1: evaluation.map(|e| e.knn.top1),
            probe_train_top1,
            probe_top1: evaluation.and_then(|e| e.probe_top1),
            loss_scale: state.loss_scale.as_ref().map(|s| s.scale),
            skipped_steps: state.loss_scale.as_ref().map(|s| s.skipped_steps),
            images_per_s: (state.epoch_batches * self.batch_size * self.replicas()) as f64
                / state.epoch_seconds.max(1e-9),
            seconds: state.epoch_seconds,
        }
    }

    /// The epoch's line on the console and its figures in TensorBoard.
    pub(super) fn report_epoch(&self, row: &EpochRow, knn_top5: Option<f64>) {
        let percent =
            |name: &str, v: Option<f64>| v.map(|v| format!("  {name} {v:.2}%")).unwrap_or_default();
        self.console.line(format!(
            "epoch {}/{}: loss {:.4}  lr {:.4}  pos-sim {:.3}  {:.1} img/s{}{}{}",
            row.epoch,
            self.epochs,
            row.loss,
            row.lr,
            row.positive_similarity,
            row.images_per_s,
            percent("kNN top-1", row.knn_top1),
            percent("probe train", row.probe_train_top1),
            percent("probe top-1", row.probe_top1),
        ));
        let mut scalars = vec![
            ("epoch/loss", row.loss),
            ("epoch/positive_similarity", row.positive_similarity),
            ("epoch/lr", row.lr),
            ("epoch/images_per_s", row.images_per_s),
        ];
        let measured = [
            ("knn/top1", row.knn_top1),
            ("knn/top5", knn_top5),
            ("probe/train_top1", row.probe_train_top1),
            ("probe/top1", row.probe_top1),
        ];
        scalars.extend(measured.into_iter().filter_map(|(tag, v)| Some((tag, v?))));
        self.report.lock().unwrap().scalars(row.step, &scalars);
    }
}
