//! The epoch loop, as a custom burn-train `SupervisedLearningStrategy`.
//!
//! Burn's default strategy validates with a loader every epoch and checkpoints by epoch number;
//! SCE needs kNN on the trunk instead, checkpoints that also hold the queue pointer, the data
//! position and the step count (so a run stopped mid-epoch resumes exactly), and a clean stop
//! on a non-finite loss. The Learner still owns model, optimizer and schedule; Burn's event
//! processor still logs the metrics and its checkpointer still writes the records.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, anyhow};
use burn::data::dataloader::DataLoader;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use burn::train::metric::store::EventStoreClient;
use burn::train::{
    EventProcessorTraining, Interrupter, Learner, LearnerEvent, LearningCheckpointer,
    SupervisedLearningStrategy, SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents,
    ValidLoader,
};
use sce_data::ViewLoader;
use sce_model::params::sync_buffers;

use super::checkpoint::SaveLog;
use super::plot::plot_history;
use super::probe::OnlineProbe;
use super::run_dir::RunDir;
use super::state::TrainState;
use crate::console::Console;
use crate::distributed::Ranks;
use crate::eval::{KnnEvaluation, KnnEvaluator};
use crate::model::{SceModel, StepContext};
use crate::report::run_log::RunLog;

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
    /// This process's place among the ranks of a run across processes (one rank without MPI).
    pub ranks: Arc<Ranks>,
    /// Shared with every copy of the model: told the step before each one (the loop's
    /// `TrainState::global_step` is the one count).
    pub step_context: Arc<StepContext>,
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

pub(super) type Processor = SupervisedTrainingEventProcessor<SceModel>;

impl SceStrategy {
    /// How many model replicas compute each step: devices of this process × ranks.
    pub(super) fn replicas(&self) -> usize {
        self.devices.len() * self.ranks.size
    }

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
            self.train_epoch(learner, state, processor, interrupter, &bar, epoch)?;
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
            if self.ranks.is_distributed() {
                let checksum = online_checksum(&learner.model());
                self.ranks.check_agreement(checksum, state.global_step)?;
            }

            let last = epoch + 1 == self.epochs;
            let evaluation = if last || (epoch + 1).is_multiple_of(self.knn_every) {
                let model = learner.model();
                sync_buffers(&model);
                self.ensure_finite(&model, state.global_step, &self.run.checkpoints())?;
                self.knn(learner, true, (state.global_step, epoch + 1))?
            } else {
                None
            };
            let row = self.epoch_row(learner, state, epoch, evaluation.as_ref());
            self.report_epoch(&row, evaluation.as_ref().map(|e| e.knn.top5));
            state.end_epoch(row);
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndEpoch(epoch + 1)));
            if self.ranks.writes() {
                self.run.write_metrics(&state.history)?;
                if let Err(e) = plot_history(
                    &self.run.path.join("training.png"),
                    &state.history,
                    state.knn_initial,
                ) {
                    self.console.line(format!("warning: no plot: {e:#}"));
                }
            }
            state.wall_seconds = wall_before + session.elapsed().as_secs_f64();
            if last || (epoch + 1).is_multiple_of(self.checkpoint_every) {
                self.save(learner, state, checkpointer.as_mut(), store)?;
            }
        }
        Ok(Ending::Finished)
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

/// The sum of the online network's trained parameters, in float64: equal on every rank
/// exactly when the ranks stepped alike. BatchNorm's running statistics are left out: each
/// rank's follow its own batches (rank 0's are the ones saved, as device 0's are in one
/// process).
fn online_checksum(model: &SceModel) -> f64 {
    sce_model::params::named_tensors(model.pair.online())
        .into_iter()
        .filter(|(path, _)| !sce_model::params::is_buffer(path))
        .map(|(_, t)| t.sum().into_scalar::<f64>())
        .sum()
}
