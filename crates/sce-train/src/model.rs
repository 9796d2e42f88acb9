//! The trainable unit hosted by burn-train's `Learner`: the momentum pair, the key queue and
//! the per-step bookkeeping, with the SCE step as `TrainStep`.
//!
//! One step (spec §1.7): target keys (no gradient, split-BN) → online embeddings → loss against
//! the queue as it was before the step → backward. The Learner then calls
//! [`TrainStep::optimize`], overridden here: optimizer step, enqueue this step's keys, EMA of the
//! target with this step's momentum.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::tensor::{Device, Tensor};
use burn::train::metric::{Adaptor, ItemLazy, LossInput};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use sce_data::ViewBatch;
use sce_loss::{KeyQueue, QueueObjective, ResslLoss, SceLoss, ViewPairing, multi_view_loss};
use sce_model::{MomentumPair, MomentumPairConfig, MomentumSchedule};

/// The loss a method trains.
#[derive(Clone, Debug)]
pub enum Objective {
    Sce(SceLoss),
    Ressl(ResslLoss),
}

impl Objective {
    fn as_dyn(&self) -> &dyn QueueObjective {
        match self {
            Objective::Sce(loss) => loss,
            Objective::Ressl(loss) => loss,
        }
    }
}

/// What stays fixed during a run and what the step hands to `optimize`.
#[derive(Debug)]
pub struct StepContext {
    pub objective: Objective,
    pub pairing: ViewPairing,
    pub bn_splits: usize,
    pub momentum: MomentumSchedule,
    pub total_steps: usize,
    pub seed: u64,
    /// Training devices; with more than one, each computes the step on its own batch.
    pub devices: Vec<Device>,
    /// The step being computed (optimizer steps completed before it). The training loop counts
    /// steps and sets it before each one; it seeds the target's BN shuffle and picks the step's
    /// momentum.
    step: AtomicUsize,
    /// Keys of the current step with their batch's shard, enqueued once the optimizer step
    /// is done. Clones of the model (one per device) share this list.
    pending: Mutex<Vec<(usize, Tensor<2>)>>,
    /// What the loss is multiplied by before the backward pass: the f16 loss scale (bits of
    /// an f64; 1 in f32 and bf16).
    loss_scale: AtomicU64,
}

impl StepContext {
    pub fn new(
        objective: Objective,
        pairing: ViewPairing,
        bn_splits: usize,
        momentum: MomentumSchedule,
        total_steps: usize,
        seed: u64,
    ) -> Self {
        Self {
            objective,
            pairing,
            bn_splits,
            momentum,
            total_steps,
            seed,
            devices: Vec::new(),
            step: AtomicUsize::new(0),
            pending: Mutex::new(Vec::new()),
            loss_scale: AtomicU64::new(1f64.to_bits()),
        }
    }

    /// Trains on several devices (gradients summed on the first; each loss is scaled by 1/N so
    /// the sum is the mean over devices, as data-parallel training averages).
    pub fn with_devices(mut self, devices: Vec<Device>) -> Self {
        self.devices = devices;
        self
    }

    pub fn step(&self) -> usize {
        self.step.load(Ordering::SeqCst)
    }

    /// Replaces the keys this process's step set aside (device order) by what `gather`
    /// makes of them: under MPI, every rank's keys in rank order.
    pub fn gather_pending(&self, gather: impl FnOnce(Tensor<2>) -> Tensor<2>) {
        let mut pending = self.pending.lock().unwrap();
        pending.sort_by_key(|(position, _)| *position);
        let keys: Vec<Tensor<2>> = std::mem::take(&mut *pending)
            .into_iter()
            .map(|(_, keys)| keys)
            .collect();
        if !keys.is_empty() {
            pending.push((0, gather(Tensor::cat(keys, 0))));
        }
    }

    /// Called by the training loop before each step, with the steps completed so far and the
    /// loss scale of the step (1 unless training in f16).
    pub fn begin_step(&self, step: usize, loss_scale: f64) {
        self.step.store(step, Ordering::SeqCst);
        self.loss_scale
            .store(loss_scale.to_bits(), Ordering::SeqCst);
    }

    fn loss_scale(&self) -> f64 {
        f64::from_bits(self.loss_scale.load(Ordering::SeqCst))
    }
}

/// Online and target networks, the queue and the step context.
#[derive(Module, Debug)]
pub struct SceModel {
    pub pair: MomentumPair,
    pub queue: KeyQueue,
    #[module(skip)]
    pub ctx: Arc<StepContext>,
}

/// The loss of one step, plus the mean cosine similarity between online embeddings and their
/// targets (a cheap health signal: it should rise during training).
pub struct SceOutput {
    pub loss: Tensor<1>,
    pub positive_similarity: Tensor<1>,
    /// What the online linear probe trains on; taken by the training loop before the output
    /// goes to Burn's metrics.
    pub probe: Option<ProbeInput>,
}

/// Detached trunk features of the first online view (spec §5.3: the reference's probe reads
/// the first online crop) with the batch's labels.
pub struct ProbeInput {
    pub features: Tensor<2>,
    pub labels: Vec<Option<usize>>,
}

impl ProbeInput {
    /// The inputs of several devices as one batch on `device` (device order kept).
    pub fn gather(inputs: Vec<ProbeInput>, device: &Device) -> Option<ProbeInput> {
        if inputs.is_empty() {
            return None;
        }
        let mut labels = Vec::new();
        let mut features = Vec::with_capacity(inputs.len());
        for input in inputs {
            labels.extend(input.labels);
            features.push(input.features.to_device(device));
        }
        Some(ProbeInput {
            features: Tensor::cat(features, 0),
            labels,
        })
    }
}

impl ItemLazy for SceOutput {
    fn sync(self) -> Result<Self, burn::tensor::ExecutionError> {
        self.loss.device().flush()?;
        Ok(Self {
            loss: self.loss.without_autodiff(),
            positive_similarity: self.positive_similarity.without_autodiff(),
            probe: None,
        })
    }
}

impl Adaptor<LossInput> for SceOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

/// SplitMix64 step, to derive per-step, per-view shuffle seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SceModel {
    pub fn new(
        config: &MomentumPairConfig,
        queue_size: usize,
        ctx: StepContext,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let pair = MomentumPair::new(config, device)?;
        let queue = KeyQueue::new(
            queue_size,
            config.embedding_dim(),
            ctx.seed ^ 0x9ee0e,
            device,
        )?;
        Ok(Self {
            pair,
            queue,
            ctx: Arc::new(ctx),
        })
    }

    /// Loss of a batch against the current queue, and the keys the batch would enqueue.
    pub fn forward_loss(&self, batch: &ViewBatch) -> (SceOutput, Tensor<2>) {
        let ctx = &self.ctx;
        let views = &batch.views;
        assert_eq!(
            views.len(),
            ctx.pairing.views(),
            "the loader yields as many views as the pairing expects (checked at start-up)"
        );
        let step_seed = mix(ctx.seed ^ mix(ctx.step() as u64));
        let keys: Vec<Tensor<2>> = ctx
            .pairing
            .target_views()
            .map(|i| {
                self.pair
                    .target_embed(views[i].clone(), ctx.bn_splits, mix(step_seed ^ i as u64))
                    .expect("batch size divisible by bn_splits (checked at start-up)")
            })
            .collect();
        let mut probe_features = None;
        let online: Vec<Tensor<2>> = ctx
            .pairing
            .online_views()
            .map(|j| {
                let (q, features) = self.pair.online_embed_with_features(views[j].clone());
                probe_features.get_or_insert(features);
                q
            })
            .collect();
        let loss = multi_view_loss(
            ctx.objective.as_dyn(),
            &ctx.pairing,
            &online,
            &keys,
            self.queue.keys(),
        )
        .expect("shapes fixed by the configuration (checked at start-up)");
        let similarity = ctx
            .pairing
            .pairs()
            .into_iter()
            .map(|(j, i)| {
                let q = online[j - ctx.pairing.online_views().start]
                    .clone()
                    .detach();
                (q * keys[i].clone()).sum_dim(1).mean()
            })
            .reduce(|a, b| a + b)
            .expect("at least one pair")
            / ctx.pairing.pairs().len() as f64;
        let enqueued = Tensor::cat(keys, 0);
        (
            SceOutput {
                loss,
                positive_similarity: similarity,
                probe: probe_features.map(|features| ProbeInput {
                    features,
                    labels: batch.labels.clone(),
                }),
            },
            enqueued,
        )
    }

    /// Enqueues the keys set aside by this step's forward passes (from every device, in device
    /// order, moved to the queue's device: Burn has no all-gather), then moves the target
    /// towards the online branch with the step's momentum.
    fn after_optimizer_step(self) -> Self {
        let mut pending = std::mem::take(&mut *self.ctx.pending.lock().unwrap());
        pending.sort_by_key(|(position, _)| *position);
        let mut queue = self.queue;
        for (_, keys) in pending {
            queue = queue
                .enqueue(keys)
                .expect("queue size is a multiple of the keys per step (checked at start-up)");
        }
        let momentum = self
            .ctx
            .momentum
            .value(self.ctx.step(), self.ctx.total_steps);
        Self {
            pair: self.pair.update_target(momentum),
            queue,
            ctx: self.ctx,
        }
    }
}

impl TrainStep for SceModel {
    type Input = ViewBatch;
    type Output = SceOutput;

    fn step(&self, batch: ViewBatch) -> TrainOutput<SceOutput> {
        let (output, keys) = self.forward_loss(&batch);
        // The batch's shard is its device's place (devices may compare equal: two CPUs).
        self.ctx.pending.lock().unwrap().push((batch.shard, keys));
        // Scaled by the f16 loss scale (undone on the gradients before the optimizer step) and
        // by 1/devices, so that the devices' gradients sum to their mean.
        let scale = self.ctx.loss_scale() / self.ctx.devices.len().max(1) as f64;
        let grads = (output.loss.clone() * scale).backward();
        TrainOutput::new(self, grads, output)
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        optim.step(lr, self, grads).after_optimizer_step()
    }

    fn optimize_multi(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: MultiGradientsParams,
    ) -> Self {
        optim.step_multi(lr, self, grads).after_optimizer_step()
    }
}

impl InferenceStep for SceModel {
    type Input = ViewBatch;
    type Output = SceOutput;

    /// The loss without touching the queue.
    fn step(&self, batch: ViewBatch) -> SceOutput {
        self.forward_loss(&batch).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::SgdConfig;
    use burn::tensor::Distribution;
    use sce_model::params::named_tensors;
    use sce_model::{Depth, MlpConfig, ResNetConfig, Stem};

    fn tiny_model(momentum: f64, device: &Device) -> SceModel {
        let trunk = ResNetConfig::new(Depth::R18, Stem::Cifar)
            .with_in_channels(1)
            .with_width(2);
        let config = MomentumPairConfig {
            projector: MlpConfig {
                dims: vec![trunk.feature_dim(), 8, 4],
                last_norm: false,
                last_bias: true,
            },
            predictor: None,
            trunk,
        };
        let ctx = StepContext::new(
            Objective::Sce(SceLoss::new(0.1, 0.05, 0.5).unwrap()),
            ViewPairing::Asymmetric { views: 2 },
            2,
            MomentumSchedule::Constant { value: momentum },
            10,
            7,
        );
        SceModel::new(&config, 16, ctx, device).unwrap()
    }

    fn batch(device: &Device) -> ViewBatch {
        ViewBatch {
            views: (0..2)
                .map(|_| Tensor::<4>::random([4, 1, 8, 8], Distribution::Normal(0.0, 1.0), device))
                .collect(),
            labels: vec![None; 4],
            indices: (0..4).collect(),
            shard: 0,
        }
    }

    fn flat(t: Tensor<2>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec().unwrap()
    }

    fn params(branch: &sce_model::Branch) -> Vec<(String, Vec<f32>)> {
        named_tensors(branch)
            .into_iter()
            .filter(|(p, _)| !sce_model::params::is_buffer(p))
            .map(|(p, t)| (p, t.into_data().convert::<f32>().try_to_vec().unwrap()))
            .collect()
    }

    /// The loss of a step is computed against the queue as it was before the step; the step's
    /// keys enter the queue only in `optimize`, after the optimizer step, at the pointer.
    #[test]
    fn the_queue_receives_the_keys_after_the_loss() {
        let ad = Device::default().autodiff();
        let model = tiny_model(0.9, &ad);
        let queue_before = flat(model.queue.keys());
        let b = batch(&ad);
        let output = TrainStep::step(&model, b.clone());
        assert_eq!(
            flat(model.queue.keys()),
            queue_before,
            "step() leaves the queue alone"
        );
        // The same loss recomputed on a copy holding the pre-step queue.
        let (expected, keys) = model.forward_loss(&b);
        let loss = |t: &Tensor<1>| t.clone().into_scalar::<f32>();
        assert_eq!(loss(&output.item.loss), loss(&expected.loss));
        let mut optim = SgdConfig::new().init();
        let model = model.optimize(&mut optim, 0.1.into(), output.grads);
        let after = flat(model.queue.keys());
        assert_eq!(
            &after[..16],
            flat(keys).as_slice(),
            "this step's 4 keys at rows 0..4"
        );
        assert_eq!(&after[16..], &queue_before[16..], "the rest untouched");
        assert_eq!(model.queue.ptr(), 4);
        assert_eq!(
            model.ctx.step(),
            0,
            "the training loop counts steps, not the model"
        );
    }

    /// `target ← m·target + (1 − m)·online` uses the online parameters *after* the optimizer
    /// step, with this step's momentum.
    #[test]
    fn the_ema_follows_the_optimizer_step() {
        let ad = Device::default().autodiff();
        let m = 0.9;
        let model = tiny_model(m, &ad);
        let target_before = params(model.pair.target());
        let online_before = params(model.pair.online());
        let output = TrainStep::step(&model, batch(&ad));
        let mut optim = SgdConfig::new().init();
        let model = model.optimize(&mut optim, 0.5.into(), output.grads);
        let online_after = params(model.pair.online());
        let target_after = params(model.pair.target());
        let mut moved = 0;
        for (((path, t0), (_, s1)), ((_, t1), (_, s0))) in target_before
            .iter()
            .zip(&online_after)
            .zip(target_after.iter().zip(&online_before))
        {
            for i in 0..t0.len() {
                let expected = m as f32 * t0[i] + (1.0 - m as f32) * s1[i];
                assert!(
                    (t1[i] - expected).abs() < 1e-5,
                    "{path}[{i}]: {} vs {expected}",
                    t1[i]
                );
                moved += usize::from(s1[i] != s0[i]);
            }
        }
        assert!(
            moved > 0,
            "the optimizer step changed the online parameters"
        );
    }
}
