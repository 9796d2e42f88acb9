//! The epoch loop, as a custom burn-train `SupervisedLearningStrategy`.
//!
//! Burn's default strategy validates with a loader every epoch and checkpoints by epoch number;
//! SCE needs kNN on the trunk instead, checkpoints that also hold the queue pointer, the data
//! position and the step count (so a run stopped mid-epoch resumes exactly), and a clean stop
//! on a non-finite loss. The Learner still owns model, optimizer and schedule; Burn's event
//! processor still logs the metrics and its checkpointer still writes the records.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, anyhow};
use burn::data::dataloader::DataLoader;
use burn::data::dataloader::Progress;
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::tensor::{Device, Tensor};
use burn::train::metric::store::EventStoreClient;
use burn::train::train::MultiDevicesTrainStep;
use burn::train::{
    EventProcessorTraining, Interrupter, Learner, LearnerEvent, LearningCheckpointer,
    SupervisedLearningStrategy, SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents,
    TrainingItem, ValidLoader,
};
use sce_data::ViewLoader;
use sce_model::params::{first_non_finite, sync_buffers};

use super::checkpoint::{
    Manifest, RecordInfo, SaveLog, delete_checkpoint, record_path, state_path, write_atomic,
};
use super::console::Console;
use super::plot::plot_history;
use super::probe::OnlineProbe;
use super::run_dir::RunDir;
use super::state::{EpochRow, TrainState};
use crate::eval::{KnnEvaluation, KnnEvaluator};
use crate::model::{ProbeInput, SceModel, SceOutput};
use crate::report::run_log::RunLog;
use indicatif::ProgressBar;

/// How a training session ended (errors aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Finished,
    Interrupted,
}

pub struct SceStrategy {
    /// Training devices (autodiff); the first holds the Learner's model and the queue.
    pub devices: Vec<Device>,
    pub loader: ViewLoader,
    pub evaluator: Option<KnnEvaluator>,
    /// The online linear probe, when on (see [`OnlineProbe`]).
    pub probe: Option<Mutex<OnlineProbe>>,
    pub run: RunDir,
    pub console: Console,
    pub epochs: usize,
    pub batch_size: usize,
    pub knn_every: usize,
    pub checkpoint_every: usize,
    /// Steps whose checkpoint exists, oldest first (the newest two are kept).
    pub saved: Mutex<Vec<usize>>,
    /// Outcomes of the record writes of Burn's checkpointer.
    pub saves: SaveLog,
    /// The run's configuration, recorded in every checkpoint's manifest.
    pub config: crate::config::TrainConfig,
    pub state: Mutex<TrainState>,
    pub outcome: Mutex<Option<anyhow::Result<Ending>>>,
    /// TensorBoard events and pictures of this session.
    pub report: Mutex<RunLog>,
}

type Processor = SupervisedTrainingEventProcessor<SceModel>;

impl SceStrategy {
    /// kNN of the online trunk and, with `probe`, the online probe's top-1 on the same test
    /// features; the test embeddings' map goes to the run directory and TensorBoard.
    fn knn(
        &self,
        learner: &Learner<SceModel>,
        probe: bool,
        (step, epoch): (usize, usize),
    ) -> anyhow::Result<Option<KnnEvaluation>> {
        let Some(evaluator) = &self.evaluator else {
            return Ok(None);
        };
        let model = learner.model().valid();
        let trunk = &model.pair.online().trunk;
        let probe = self.probe.as_ref().filter(|_| probe);
        let score = |features: Tensor<2>, labels: &[usize]| {
            probe
                .expect("only called with a probe")
                .lock()
                .unwrap()
                .accuracy(features, labels)
        };
        let evaluation = evaluator
            .evaluate_with_probe(
                &|x| trunk.forward(x),
                probe.is_some().then_some(&score as &crate::eval::TestProbe),
            )
            .with_context(|| format!("kNN evaluation of {}", self.run.path.display()))?;
        self.report.lock().unwrap().embedding_map(
            step,
            epoch,
            &evaluation.test_features,
            &evaluation.test_labels,
            &evaluator.test.class_names(),
            evaluation.knn.top1,
        );
        Ok(Some(evaluation))
    }

    /// Writes the online probe's records of checkpoint `step` (synchronously, atomically).
    fn save_probe(&self, step: usize) -> anyhow::Result<Vec<(String, RecordInfo)>> {
        let Some(probe) = &self.probe else {
            return Ok(Vec::new());
        };
        let (classifier, optim) = probe.lock().unwrap().records();
        let dir = self.run.checkpoints();
        let mut written = Vec::new();
        for (name, bytes) in [
            ("probe", classifier.into_bytes()),
            ("probe_optim", optim.into_bytes()),
        ] {
            let path = record_path(&dir, name, step);
            let bytes = bytes.map_err(|e| anyhow!("cannot serialise {}: {e}", path.display()))?;
            write_atomic(&path, &bytes)
                .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
            written.push((name.to_string(), RecordInfo::of(&bytes)));
        }
        Ok(written)
    }

    /// Refuses a state holding NaN or infinite values anywhere (online and target networks with
    /// their BatchNorm statistics, queue, probe): a diverged run must not be saved, scored or
    /// summarised as a result, even when its loss still reads finite.
    fn ensure_finite(
        &self,
        model: &SceModel,
        step: usize,
        dir: &std::path::Path,
    ) -> anyhow::Result<()> {
        let probe = || self.probe.as_ref()?.lock().unwrap().first_non_finite();
        let Some(path) = first_non_finite(model).or_else(|| probe().map(|p| format!("probe.{p}")))
        else {
            return Ok(());
        };
        Err(anyhow!(
            "the training state diverged: `{path}` holds NaN or infinite values at step {step}. \
             Training stopped without saving this state; the last finite checkpoint in {} is \
             kept. Lower optim.lr or check the data",
            dir.display()
        ))
    }

    /// Saves a checkpoint and returns only once it is complete and durable: Burn's threads
    /// write the records, this waits for each one's outcome, then writes the manifest. Only
    /// then are checkpoints older than the newest two deleted. Any failure ends the run.
    fn save(
        &self,
        learner: &Learner<SceModel>,
        state: &mut TrainState,
        checkpointer: Option<&mut LearningCheckpointer<SceModel>>,
        store: &EventStoreClient,
    ) -> anyhow::Result<()> {
        let Some(checkpointer) = checkpointer else {
            return Ok(());
        };
        let model = learner.model();
        // Burn's BatchNorm statistics merge their latest update lazily; fold it in first.
        sync_buffers(&model);
        state.queue_ptr = model.queue.ptr();
        let step = state.global_step;
        let dir = self.run.checkpoints();
        self.ensure_finite(&model, step, &dir)?;
        let not_saved =
            |e: anyhow::Error| anyhow!("cannot save the checkpoint at step {step}: {e:#}");
        checkpointer.checkpoint(learner, step, store);
        let mut records = self.saves.wait(step).map_err(not_saved)?;
        records.extend(self.save_probe(step).map_err(not_saved)?);
        let manifest = Manifest {
            state: state.clone(),
            records,
            config: self.config.clone(),
        };
        let path = state_path(&dir, step);
        write_atomic(&path, &serde_json::to_vec_pretty(&manifest)?)
            .map_err(|e| not_saved(anyhow!("cannot write {}: {e}", path.display())))?;
        let mut saved = self.saved.lock().unwrap();
        if saved.last() != Some(&step) {
            saved.push(step);
        }
        while saved.len() > 2 {
            let old = saved.remove(0);
            if let Err(e) = delete_checkpoint(&dir, old) {
                self.console.line(format!(
                    "warning: cannot delete the old checkpoint at step {old} in {}: {e}",
                    dir.display()
                ));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn run_epochs(
        &self,
        learner: &mut Learner<SceModel>,
        state: &mut TrainState,
        processor: &mut Processor,
        mut checkpointer: Option<LearningCheckpointer<SceModel>>,
        interrupter: &Interrupter,
        store: &EventStoreClient,
    ) -> anyhow::Result<Ending> {
        let session = Instant::now();
        let wall_before = state.wall_seconds;
        let fresh = state.global_step == 0 && state.batch_in_epoch == 0;
        if fresh && state.knn_initial.is_none() && self.evaluator.is_some() {
            self.console.line("kNN of the untrained network…");
            if let Some(evaluation) = self.knn(learner, false, (0, 0))? {
                let knn = evaluation.knn;
                state.knn_initial = Some(knn.top1);
                self.console
                    .line(format!("epoch 0: kNN top-1 {:.2}%", knn.top1));
                self.report
                    .lock()
                    .unwrap()
                    .scalars(0, &[("knn/top1", knn.top1), ("knn/top5", knn.top5)]);
            }
        }
        let steps_per_epoch = self.loader.batches_per_epoch();
        for epoch in state.epoch..self.epochs {
            self.loader.cursor().set(epoch as u64, state.batch_in_epoch);
            interrupter.fail_on_error(processor.process_train(LearnerEvent::StartSplit {
                epoch_number: epoch + 1,
                total_items: self.loader.num_items(),
            }));
            let bar = self.console.bar(
                steps_per_epoch,
                format!("epoch {}/{}", epoch + 1, self.epochs),
            );
            bar.set_position(state.batch_in_epoch as u64);
            let epoch_run = EpochRun {
                state: &mut *state,
                processor: &mut *processor,
                interrupter,
                bar: &bar,
                epoch,
            };
            if self.devices.len() > 1 {
                self.train_epoch_multi(learner, epoch_run)?;
            } else {
                self.train_epoch(learner, epoch_run)?;
            }
            bar.finish_and_clear();
            if let Some(error) = interrupter.error() {
                return Err(anyhow!("{error}"));
            }
            if interrupter.should_stop() {
                self.save(learner, state, checkpointer.as_mut(), store)?;
                state.wall_seconds = wall_before + session.elapsed().as_secs_f64();
                return Ok(Ending::Interrupted);
            }
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndSplit(epoch + 1)));

            let last = epoch + 1 == self.epochs;
            let evaluation = if last || (epoch + 1).is_multiple_of(self.knn_every) {
                let model = learner.model();
                sync_buffers(&model);
                self.ensure_finite(&model, state.global_step, &self.run.checkpoints())?;
                self.knn(learner, true, (state.global_step, epoch + 1))?
            } else {
                None
            };
            let knn = evaluation.as_ref().map(|e| e.knn.top1);
            let knn_top5 = evaluation.as_ref().map(|e| e.knn.top5);
            let probe_top1 = evaluation.as_ref().and_then(|e| e.probe_top1);
            let batches = state.epoch_batches.max(1) as f64;
            let probe_train_top1 = (state.epoch_probe_seen > 0)
                .then(|| 100.0 * state.epoch_probe_correct as f64 / state.epoch_probe_seen as f64);
            let row = EpochRow {
                epoch: epoch + 1,
                step: state.global_step,
                loss: state.epoch_loss_sum / batches,
                lr: learner.lr_current().base(),
                positive_similarity: state.epoch_similarity_sum / batches,
                knn_top1: knn,
                probe_train_top1,
                probe_top1,
                images_per_s: (state.epoch_batches * self.batch_size * self.devices.len()) as f64
                    / state.epoch_seconds.max(1e-9),
                seconds: state.epoch_seconds,
            };
            let percent = |name: &str, v: Option<f64>| {
                v.map(|v| format!("  {name} {v:.2}%")).unwrap_or_default()
            };
            self.console.line(format!(
                "epoch {}/{}: loss {:.4}  lr {:.4}  pos-sim {:.3}  {:.1} img/s{}{}{}",
                row.epoch,
                self.epochs,
                row.loss,
                row.lr,
                row.positive_similarity,
                row.images_per_s,
                percent("kNN top-1", knn),
                percent("probe train", probe_train_top1),
                percent("probe top-1", probe_top1),
            ));
            let mut scalars = vec![
                ("epoch/loss", row.loss),
                ("epoch/positive_similarity", row.positive_similarity),
                ("epoch/lr", row.lr),
                ("epoch/images_per_s", row.images_per_s),
            ];
            let measured = [
                ("knn/top1", knn),
                ("knn/top5", knn_top5),
                ("probe/train_top1", probe_train_top1),
                ("probe/top1", probe_top1),
            ];
            scalars.extend(measured.into_iter().filter_map(|(tag, v)| Some((tag, v?))));
            self.report.lock().unwrap().scalars(row.step, &scalars);
            state.history.push(row);
            state.epoch = epoch + 1;
            state.batch_in_epoch = 0;
            state.epoch_loss_sum = 0.0;
            state.epoch_similarity_sum = 0.0;
            state.epoch_batches = 0;
            state.epoch_seconds = 0.0;
            state.epoch_probe_seen = 0;
            state.epoch_probe_correct = 0;
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndEpoch(epoch + 1)));
            self.run.write_metrics(&state.history)?;
            if let Err(e) = plot_history(
                &self.run.path.join("training.png"),
                &state.history,
                state.knn_initial,
            ) {
                self.console.line(format!("warning: no plot: {e:#}"));
            }
            state.wall_seconds = wall_before + session.elapsed().as_secs_f64();
            if last || (epoch + 1).is_multiple_of(self.checkpoint_every) {
                self.save(learner, state, checkpointer.as_mut(), store)?;
            }
        }
        Ok(Ending::Finished)
    }
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
    /// The step's figures for TensorBoard.
    fn log_step(&self, step: usize, loss: f64, similarity: f64, learner: &Learner<SceModel>) {
        self.report.lock().unwrap().scalars(
            step,
            &[
                ("train/loss", loss),
                ("train/positive_similarity", similarity),
                ("train/lr", learner.lr_current().base()),
            ],
        );
    }

    /// One epoch on one device: a step per batch.
    fn train_epoch(
        &self,
        learner: &mut Learner<SceModel>,
        mut run: EpochRun,
    ) -> anyhow::Result<()> {
        let mut batches = self.loader.iter();
        let mut tick = Instant::now();
        while let Some(item) = batches.next() {
            let batch = item.map_err(|e| anyhow!("reading training data: {e}"))?;
            let progress = batches.progress();
            let mut output = learner.train_step(batch);
            let loss = scalar(&output.item.loss);
            run.check_finite(loss, &self.run.checkpoints())?;
            let similarity = scalar(&output.item.positive_similarity);
            learner.lr_step();
            learner.optimizer_step(output.grads);
            run.probe(self.probe.as_ref(), output.item.probe.take());
            let seconds = tick.elapsed().as_secs_f64();
            tick = Instant::now();
            run.record(loss, similarity, self.batch_size, seconds);
            self.log_step(run.state.global_step, loss, similarity, learner);
            run.process(output.item, progress, learner.lr_current());
            if run.interrupter.should_stop() {
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
            learner.lr_step();
            learner.optimizer_step(accumulator.grads());
            run.probe(self.probe.as_ref(), ProbeInput::gather(probe_inputs, main));
            let seconds = tick.elapsed().as_secs_f64();
            tick = Instant::now();
            run.record(loss, similarity, self.batch_size * n, seconds);
            self.log_step(run.state.global_step, loss, similarity, learner);
            for item in items {
                run.process(item, progress.clone(), learner.lr_current());
            }
            if run.interrupter.should_stop() {
                break;
            }
        }
        Ok(())
    }
}

impl SupervisedLearningStrategy<SceModel> for SceStrategy {
    fn fit(
        &self,
        components: TrainingComponents<SceModel>,
        mut learner: Learner<SceModel>,
        _train: TrainLoader<SceModel>,
        _valid: ValidLoader<SceModel>,
        _starting_epoch: usize,
    ) -> (SceModel, Processor) {
        let TrainingComponents {
            checkpointer,
            interrupter,
            mut event_processor,
            event_store,
            ..
        } = components;
        learner.fork(&self.devices[0]);
        let mut state = self.state.lock().unwrap().clone();
        let outcome = self.run_epochs(
            &mut learner,
            &mut state,
            &mut event_processor,
            checkpointer,
            &interrupter,
            &event_store,
        );
        *self.state.lock().unwrap() = state;
        *self.outcome.lock().unwrap() = Some(outcome);
        (learner.model(), event_processor)
    }
}
