use burn::optim::LearningRate;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};

/// Linear warmup from exactly 0 to `peak` at step `warmup − 1`, then cosine to 0 at the last
/// step (spec §3), stepped every iteration. Burn's built-in schedulers refuse an initial LR of
/// 0 or a peak above 1 (LARS on ImageNet peaks at 4.8), hence this one.
#[derive(Clone, Debug)]
pub struct WarmupCosine {
    peak: f64,
    warmup: usize,
    total: usize,
    /// Steps taken so far; the next `step()` returns the LR of this index.
    next: usize,
}

impl WarmupCosine {
    pub fn new(peak: f64, warmup: usize, total: usize) -> Self {
        Self {
            peak,
            warmup: warmup.min(total),
            total: total.max(1),
            next: 0,
        }
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.next
    }

    /// The LR at 0-based step `t`.
    pub fn at(&self, t: usize) -> f64 {
        if t < self.warmup {
            if self.warmup <= 1 {
                return 0.0;
            }
            return self.peak * t as f64 / (self.warmup - 1) as f64;
        }
        let span = (self.total - self.warmup).max(1) as f64;
        let progress = ((t - self.warmup) as f64 / span).min(1.0);
        0.5 * self.peak * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

impl LrScheduler for WarmupCosine {
    fn step(&mut self) -> LearningRate {
        let lr = self.at(self.next);
        self.next += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("next", self.next as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(next) = record.scalar::<u64>("next") {
            self.next = next as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_starts_at_zero_and_peaks_at_step_w_minus_one() {
        let mut s = WarmupCosine::new(4.8, 5, 15);
        let lrs: Vec<f64> = (0..15).map(|_| s.step()).collect();
        let expected_warmup = [0.0, 1.2, 2.4, 3.6, 4.8];
        for (got, want) in lrs.iter().zip(expected_warmup) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
        // Cosine over the remaining 10 steps: step 5 is the peak, step 10 half, then to 0.
        assert!((lrs[5] - 4.8).abs() < 1e-12);
        assert!((lrs[10] - 2.4).abs() < 1e-12);
        let last = 0.5 * 4.8 * (1.0 + (std::f64::consts::PI * 0.9).cos());
        assert!((lrs[14] - last).abs() < 1e-12);
        assert!(lrs.iter().all(|&v| v >= 0.0));
    }

    #[test]
    fn state_survives_a_record_round_trip() {
        let mut a = WarmupCosine::new(0.06, 3, 20);
        for _ in 0..7 {
            a.step();
        }
        let mut b = WarmupCosine::new(0.06, 3, 20);
        b.load_record(a.to_record());
        for _ in 0..13 {
            assert_eq!(a.step(), b.step());
        }
    }
}
