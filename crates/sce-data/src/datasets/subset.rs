//! Subsets for every limit (`data.limit_train`, `eval.bank_limit`, `eval.test_limit`, the
//! evaluation commands' limits): seeded and class-stratified, never a prefix — folder datasets
//! are stored class by class, so their first N images hold only the first few classes.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::{ImageSource, Sample};
use crate::DataError;

/// `len` images of another source: the same images for the same seed; with labels, one image of
/// every class first (when `len` allows), then each class in proportion to its size.
pub struct Subset {
    inner: Arc<dyn ImageSource>,
    indices: Vec<usize>,
}

/// The indices a stratified subset of `len` keeps, sorted. Each class's images are shuffled
/// (seeded); the i-th image of a class of n gets the key (i + ½)/n — its place in a
/// proportional interleaving of all classes — except the first of each class, which comes
/// before all others; the `len` smallest keys are kept.
pub fn stratified_indices(labels: &[Option<usize>], len: usize, seed: u64) -> Vec<usize> {
    if len >= labels.len() {
        return (0..labels.len()).collect();
    }
    let mut classes: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
    for (i, label) in labels.iter().enumerate() {
        classes.entry(*label).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005a_b5e7);
    let mut keyed: Vec<(f64, usize)> = Vec::with_capacity(labels.len());
    for members in classes.values_mut() {
        members.shuffle(&mut rng);
        let n = members.len() as f64;
        for (rank, &index) in members.iter().enumerate() {
            let key = if rank == 0 {
                -1.0
            } else {
                (rank as f64 + 0.5) / n
            };
            keyed.push((key, index));
        }
    }
    // Equal keys (classes of equal size) in a seeded order, not by class.
    keyed.shuffle(&mut rng);
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut kept: Vec<usize> = keyed.into_iter().take(len).map(|(_, i)| i).collect();
    kept.sort_unstable();
    kept
}

impl Subset {
    /// A seeded, class-stratified subset of `len` images of `inner` (all of them if it has no
    /// more). Labels are read through [`ImageSource::label`], without decoding images.
    pub fn stratified(inner: Arc<dyn ImageSource>, len: usize, seed: u64) -> Self {
        let labels: Vec<Option<usize>> = (0..inner.len()).map(|i| inner.label(i)).collect();
        let indices = stratified_indices(&labels, len, seed);
        Self { inner, indices }
    }

    /// Classes present in the subset, out of the source's.
    pub fn classes_present(&self) -> usize {
        let mut seen: Vec<usize> = self
            .indices
            .iter()
            .filter_map(|&i| self.inner.label(i))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

impl ImageSource for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let inner = *self
            .indices
            .get(index)
            .ok_or_else(|| DataError::out_of_range(index, self.len(), "the subset"))?;
        self.inner.get(inner)
    }
    fn label(&self, index: usize) -> Option<usize> {
        self.indices.get(index).and_then(|&i| self.inner.label(i))
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn item_name(&self, index: usize) -> String {
        self.indices
            .get(index)
            .map(|&i| self.inner.item_name(i))
            .unwrap_or_default()
    }
    fn notes(&self) -> Vec<String> {
        self.inner.notes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 classes stored class by class, 100 images each (a folder dataset's order).
    fn class_ordered() -> Vec<Option<usize>> {
        (0..1000).map(|i| Some(i / 100)).collect()
    }

    fn per_class(labels: &[Option<usize>], kept: &[usize]) -> Vec<usize> {
        let mut counts = vec![0; 10];
        for &i in kept {
            counts[labels[i].unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn every_class_in_proportion_and_the_same_for_the_same_seed() {
        let labels = class_ordered();
        let kept = stratified_indices(&labels, 400, 7);
        assert_eq!(kept.len(), 400);
        assert_eq!(
            per_class(&labels, &kept),
            vec![40; 10],
            "a prefix would be 100×4, 0×6"
        );
        assert_eq!(kept, stratified_indices(&labels, 400, 7));
        assert_ne!(kept, stratified_indices(&labels, 400, 8));
        // Fewer images than classes: all different classes.
        let few = stratified_indices(&labels, 7, 1);
        assert_eq!(
            per_class(&labels, &few).iter().filter(|&&c| c == 1).count(),
            7
        );
        // Every class present even when one is tiny.
        let mut skewed: Vec<Option<usize>> = (0..990).map(|_| Some(0)).collect();
        skewed.extend((0..10).map(|i| Some(1 + i % 9)));
        let kept = stratified_indices(&skewed, 20, 3);
        let mut classes: Vec<_> = kept.iter().map(|&i| skewed[i]).collect();
        classes.sort();
        classes.dedup();
        assert_eq!(classes.len(), 10);
        // Unlabelled data: a seeded sample, not the first images.
        let none = vec![None; 1000];
        let kept = stratified_indices(&none, 100, 5);
        assert!(kept.iter().any(|&i| i >= 500));
        assert_eq!(stratified_indices(&none, 2000, 5).len(), 1000);
    }
}
