//! Data-parallel pretraining across processes: `mpirun -np N sce-train pretrain …` runs N
//! ranks, one device each, that train one model together (docs/distributed.md).
//!
//! [`Ranks`] says which rank this process is and holds the few collective operations a step
//! needs, through MPI (the `mpi` feature, Open MPI's library). Outside `mpirun` the process is
//! the only rank and every operation is the identity, so the training loop has one code path.
//! Values travel through host memory as f32 (gradients, keys, probe features) or f64 (the
//! step's figures); the sums' order is MPI's, the same on every rank, so all ranks hold
//! bit-identical models.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

use crate::model::ProbeInput;

/// Gradients are exchanged in slices of this many values, so that no host buffer of the
/// exchange is larger than 16 MiB beyond the gradients themselves.
const BUCKET: usize = 1 << 22;

/// This process's place among the ranks of a run.
pub struct Ranks {
    pub rank: usize,
    pub size: usize,
    /// The rank's index among the ranks of its node: its device's index.
    pub local_rank: usize,
    comm: Option<Comm>,
    /// What the gradient exchanges have cost so far: steps, values, nanoseconds (host copies
    /// included).
    exchanged: [AtomicU64; 3],
    /// Set once every rank has reached the end of training together: what fails after that
    /// (an interrupted run's ending) fails alike on every rank and needs no abort.
    ended_together: AtomicBool,
}

/// What the gradient exchanges of a session cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExchangeCost {
    pub steps: u64,
    /// Gradient values each rank contributed per step (f32).
    pub values_per_step: u64,
    pub seconds_per_step: f64,
}

/// The launcher's variables that give the number of ranks (Open MPI, then MPICH/Hydra and
/// Slurm's PMI), read before MPI starts so that a build without MPI can refuse clearly.
fn launched_size() -> usize {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse().ok())
        .unwrap_or(1)
}

/// This process's rank as its launcher numbered it (0 outside a launcher): ranks other than
/// 0 print no results, rank 0 speaks for the run.
pub fn launched_rank() -> usize {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse().ok())
        .unwrap_or(0)
}

fn launched_local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.parse().ok())
    .unwrap_or(0)
}

impl Ranks {
    /// The only rank: no launcher, or a launcher that started one process.
    pub fn single() -> Self {
        Self {
            rank: 0,
            size: 1,
            local_rank: 0,
            comm: None,
            exchanged: Default::default(),
            ended_together: AtomicBool::new(false),
        }
    }

    /// Joins the ranks `mpirun` (or `srun`) started. MPI stays up until the process ends.
    pub fn join() -> anyhow::Result<Self> {
        let size = launched_size();
        if size <= 1 {
            return Ok(Self::single());
        }
        let comm = Comm::start(size)?;
        Ok(Self {
            rank: comm.rank(),
            size: comm.size(),
            local_rank: launched_local_rank(),
            comm: Some(comm),
            exchanged: Default::default(),
            ended_together: AtomicBool::new(false),
        })
    }

    /// Rank 0 alone writes the run directory (checkpoints, metrics, TensorBoard, pictures)
    /// and evaluates.
    pub fn writes(&self) -> bool {
        self.rank == 0
    }

    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }

    /// Ends every rank of the job with a non-zero status (MPI_Abort): a rank that fails must
    /// not leave the others waiting in a collective.
    pub fn abort(&self, code: i32) {
        if let Some(comm) = &self.comm {
            comm.abort(code);
        }
    }

    /// Waits for every rank at the end of training; from then on every rank knows how the
    /// others ended.
    pub fn end_together(&self) {
        self.barrier();
        self.ended_together.store(true, Ordering::SeqCst);
    }

    /// Whether [`end_together`](Self::end_together) has returned.
    pub fn ended_together(&self) -> bool {
        self.ended_together.load(Ordering::SeqCst)
    }

    /// Waits for every rank.
    pub fn barrier(&self) {
        if let Some(comm) = &self.comm {
            comm.barrier();
        }
    }

    /// Element-wise means over the ranks.
    pub fn mean_f64<const N: usize>(&self, values: [f64; N]) -> [f64; N] {
        let Some(comm) = &self.comm else {
            return values;
        };
        let mut sums = [0.0; N];
        comm.sum_f64(&values, &mut sums);
        sums.map(|s| s / self.size as f64)
    }

    /// Replaces `values` by their element-wise sum over the ranks.
    pub fn sum_in_place(&self, values: &mut [f32]) {
        if let Some(comm) = &self.comm {
            let local = values.to_vec();
            comm.sum_f32(&local, values);
        }
    }

    /// Every rank's `values` (the same length on each), in rank order.
    pub fn gather_f64(&self, values: &[f64]) -> Vec<f64> {
        match &self.comm {
            Some(comm) => comm.gather_f64(values, self.size),
            None => values.to_vec(),
        }
    }

    /// Rank 0's bytes on every rank.
    pub fn broadcast(&self, bytes: Vec<u8>) -> Vec<u8> {
        match &self.comm {
            Some(comm) => comm.broadcast(bytes, self.rank),
            None => bytes,
        }
    }

    /// Every rank's rows (the same shape on each), concatenated in rank order.
    pub fn gather_rows(&self, rows: Tensor<2>) -> Tensor<2> {
        let Some(comm) = &self.comm else {
            return rows;
        };
        let [n, d] = rows.dims();
        let device = rows.device();
        let gathered = comm.gather_f32(&host_f32(rows), self.size);
        Tensor::from_data(TensorData::new(gathered, [n * self.size, d]), &device)
    }

    /// The online probe's input of every rank as one batch, in rank order, as the in-process
    /// multi-device loop gathers it.
    pub fn gather_probe(&self, input: ProbeInput) -> ProbeInput {
        if self.comm.is_none() {
            return input;
        }
        let labels: Vec<f64> = input
            .labels
            .iter()
            .map(|l| l.map_or(-1.0, |l| l as f64))
            .collect();
        ProbeInput {
            features: self.gather_rows(input.features),
            labels: self
                .gather_f64(&labels)
                .into_iter()
                .map(|l| (l >= 0.0).then_some(l as usize))
                .collect(),
        }
    }

    /// The mean of every rank's gradients for `model`'s parameters, on every rank: the
    /// gradients are laid end to end in the module's parameter order, summed over the ranks
    /// in buckets, divided by the number of ranks and put back in place.
    pub fn average_gradients<M: Module>(
        &self,
        grads: GradientsParams,
        model: &M,
    ) -> GradientsParams {
        let Some(comm) = &self.comm else {
            return grads;
        };
        let start = Instant::now();
        let mut collect = Collect {
            grads: &grads,
            values: Vec::new(),
        };
        model.visit(&mut collect);
        let local = collect.values;
        let mut summed = vec![0.0f32; local.len()];
        for (send, receive) in local.chunks(BUCKET).zip(summed.chunks_mut(BUCKET)) {
            comm.sum_f32(send, receive);
        }
        let scale = 1.0 / self.size as f32;
        summed.iter_mut().for_each(|v| *v *= scale);
        let mut spread = Spread {
            grads,
            values: &summed,
            offset: 0,
        };
        model.visit(&mut spread);
        debug_assert_eq!(spread.offset, summed.len());
        let [steps, values, nanos] = &self.exchanged;
        steps.fetch_add(1, Ordering::Relaxed);
        values.store(summed.len() as u64, Ordering::Relaxed);
        nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        spread.grads
    }

    /// The gradient exchanges' cost so far (`None` before the first, or with one rank).
    pub fn exchange_cost(&self) -> Option<ExchangeCost> {
        let [steps, values, nanos] = self.exchanged.each_ref().map(|a| a.load(Ordering::Relaxed));
        (steps > 0).then(|| ExchangeCost {
            steps,
            values_per_step: values,
            seconds_per_step: nanos as f64 * 1e-9 / steps as f64,
        })
    }

    /// Refuses to go on when the ranks' models differ: a cheap sum of the online parameters,
    /// compared across ranks (they step identically, so they agree to the bit).
    pub fn check_agreement(&self, checksum: f64, step: usize) -> anyhow::Result<()> {
        if self.comm.is_none() {
            return Ok(());
        }
        agreement(&self.gather_f64(&[checksum]), step)
    }
}

/// An error naming the ranks whose checksum differs from rank 0's, to the bit.
fn agreement(sums: &[f64], step: usize) -> anyhow::Result<()> {
    let differing: Vec<String> = sums
        .iter()
        .enumerate()
        .filter(|(_, s)| s.to_bits() != sums[0].to_bits())
        .map(|(rank, s)| format!("rank {rank}: {s}"))
        .collect();
    anyhow::ensure!(
        differing.is_empty(),
        "the ranks' models differ at step {step} (rank 0: {}; {}): the ranks did not step \
         alike — check that every rank runs the same sce-train build and configuration",
        sums[0],
        differing.join(", ")
    );
    Ok(())
}

fn host_f32<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

/// Lays the gradients of a module's parameters end to end, in the module's order.
struct Collect<'a> {
    grads: &'a GradientsParams,
    values: Vec<f32>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            self.values.extend(host_f32(grad));
        }
    }
}

/// Puts exchanged values back as the gradients they were collected from.
struct Spread<'a> {
    grads: GradientsParams,
    values: &'a [f32],
    offset: usize,
}

impl Spread<'_> {
    fn replace<const D: usize>(&mut self, id: ParamId) {
        let Some(grad) = self.grads.remove::<D>(id) else {
            return;
        };
        let shape = grad.shape();
        let len = shape.num_elements();
        let values = self.values[self.offset..self.offset + len].to_vec();
        self.offset += len;
        let grad = Tensor::<D>::from_data(TensorData::new(values, shape), &grad.device());
        self.grads.register(id, grad);
    }
}

impl ModuleVisitor for Spread<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.replace::<D>(param.id);
    }
}

#[cfg(feature = "mpi")]
mod mpi_comm {
    use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
    use mpi::environment::Threading;
    use mpi::topology::{Communicator, SimpleCommunicator};

    /// MPI's world communicator. MPI is started with `Threading::Serialized`: calls may come
    /// from any thread, one at a time — the training loop's thread makes them all.
    pub struct Comm {
        world: SimpleCommunicator,
    }

    // SAFETY: MPI was initialised with MPI_THREAD_SERIALIZED and only the training loop calls
    // through this handle, never two threads at once; the handle itself is a plain id.
    unsafe impl Send for Comm {}
    unsafe impl Sync for Comm {}

    impl Comm {
        pub fn start(expected: usize) -> anyhow::Result<Self> {
            let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
                .ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
            anyhow::ensure!(
                matches!(threading, Threading::Serialized | Threading::Multiple),
                "this MPI library offers threading level {threading:?}; sce-train needs \
                 Serialized"
            );
            // MPI ends with the process (the OS reclaims it; MPI_Finalize runs at exit).
            std::mem::forget(universe);
            // SAFETY: registers a plain C function to run at exit, after MPI was initialised.
            unsafe { libc_atexit(finalize) };
            let world = SimpleCommunicator::world();
            anyhow::ensure!(
                world.size() as usize == expected,
                "the launcher announced {expected} ranks but MPI has {}",
                world.size()
            );
            Ok(Self { world })
        }

        pub fn rank(&self) -> usize {
            self.world.rank() as usize
        }

        pub fn size(&self) -> usize {
            self.world.size() as usize
        }

        pub fn abort(&self, code: i32) {
            self.world.abort(code)
        }

        pub fn barrier(&self) {
            self.world.barrier();
        }

        pub fn sum_f32(&self, send: &[f32], receive: &mut [f32]) {
            self.world
                .all_reduce_into(send, receive, SystemOperation::sum());
        }

        pub fn sum_f64(&self, send: &[f64], receive: &mut [f64]) {
            self.world
                .all_reduce_into(send, receive, SystemOperation::sum());
        }

        pub fn gather_f32(&self, send: &[f32], ranks: usize) -> Vec<f32> {
            let mut receive = vec![0.0f32; send.len() * ranks];
            self.world.all_gather_into(send, &mut receive[..]);
            receive
        }

        pub fn gather_f64(&self, send: &[f64], ranks: usize) -> Vec<f64> {
            let mut receive = vec![0.0f64; send.len() * ranks];
            self.world.all_gather_into(send, &mut receive[..]);
            receive
        }

        pub fn broadcast(&self, mut bytes: Vec<u8>, rank: usize) -> Vec<u8> {
            let root = self.world.process_at_rank(0);
            let mut len = if rank == 0 { bytes.len() as u64 } else { 0 };
            root.broadcast_into(&mut len);
            bytes.resize(len as usize, 0);
            root.broadcast_into(&mut bytes[..]);
            bytes
        }
    }

    extern "C" fn finalize() {
        // SAFETY: called once at process exit, after every collective has returned.
        unsafe {
            mpi::ffi::MPI_Finalize();
        }
    }

    unsafe extern "C" {
        #[link_name = "atexit"]
        fn libc_atexit(f: extern "C" fn()) -> i32;
    }
}

#[cfg(feature = "mpi")]
use mpi_comm::Comm;

/// Without the `mpi` feature there is no communicator: a process started by `mpirun` as one
/// of several ranks is refused.
#[cfg(not(feature = "mpi"))]
enum Comm {}

#[cfg(not(feature = "mpi"))]
impl Comm {
    fn start(size: usize) -> anyhow::Result<Self> {
        Err(crate::error::usage(format!(
            "this process was started as one of {size} MPI ranks, but this sce-train was built \
             without the `mpi` feature; build it with `cargo build --release -p sce-train \
             --features mpi` (needs Open MPI and libclang, docs/distributed.md)"
        )))
    }
    fn rank(&self) -> usize {
        match *self {}
    }
    fn size(&self) -> usize {
        match *self {}
    }
    fn abort(&self, _: i32) {
        match *self {}
    }
    fn barrier(&self) {
        match *self {}
    }
    fn sum_f32(&self, _: &[f32], _: &mut [f32]) {
        match *self {}
    }
    fn sum_f64(&self, _: &[f64], _: &mut [f64]) {
        match *self {}
    }
    fn gather_f32(&self, _: &[f32], _: usize) -> Vec<f32> {
        match *self {}
    }
    fn gather_f64(&self, _: &[f64], _: usize) -> Vec<f64> {
        match *self {}
    }
    fn broadcast(&self, _: Vec<u8>, _: usize) -> Vec<u8> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_whose_models_differ_by_a_bit_are_named() {
        assert!(agreement(&[1.5, 1.5, 1.5], 7).is_ok());
        let off_by_one_ulp = f64::from_bits(1.5f64.to_bits() + 1);
        let message = agreement(&[1.5, 1.5, off_by_one_ulp], 7)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("differ at step 7") && message.contains("rank 2:"),
            "{message}"
        );
        assert!(!message.contains("rank 1:"), "{message}");
    }
}
