//! The `k` largest values of each row and where they are, exact on every device.
//!
//! Burn's top-k on the GPU backends is one reduction (cubek's), and on some Vulkan devices it
//! comes back wrong without failing: on Mesa's lavapipe, from k ≈ 64 on (k = 200 is the kNN
//! protocol's), every index of a row but the first is -1 and a few others point elsewhere
//! (docs/backends.md); cubek's issue 422 reports the same signature on NVIDIA under Vulkan at
//! k = 5. [`top_k_rows`] therefore proves the device's answer on the device — one gather and
//! one count per row, far cheaper than the similarities it ranks — and recomputes the rows on
//! the host when the proof fails. A device that computes top-k right pays the proof only.

use burn::tensor::{Int, Tensor, TensorData, Transaction};
use rayon::prelude::*;

use crate::rows::sum_rows;

/// The `k` largest values of each row of a `[rows, len]` tensor, on the host: row `r`'s are
/// `values[r * k..(r + 1) * k]`, largest first, and `indices` says where each came from.
#[derive(Clone, Debug, PartialEq)]
pub struct TopRows {
    pub k: usize,
    pub values: Vec<f32>,
    pub indices: Vec<usize>,
    /// The device's top-k failed its proof and the rows were ranked on the host.
    pub recomputed_on_host: bool,
}

impl TopRows {
    pub fn row_values(&self, row: usize) -> &[f32] {
        &self.values[row * self.k..(row + 1) * self.k]
    }

    pub fn row_indices(&self, row: usize) -> &[usize] {
        &self.indices[row * self.k..(row + 1) * self.k]
    }
}

/// The `k` largest values of each row of `x` (`1 <= k <= len`) and their indices. Ties are
/// ranked as the device ranks them when its answer is proven, by index otherwise; NaN counts
/// as the largest value (a caller that must not rank NaN checks the values).
pub fn top_k_rows(x: Tensor<2>, k: usize) -> TopRows {
    let [_, len] = x.dims();
    assert!(
        (1..=len).contains(&k),
        "top-k needs 1 <= k <= {len} (the row length), got k = {k}"
    );
    let (values, indices) = x.clone().topk_with_indices(k, 1);
    proven(&x, values, indices).unwrap_or_else(|| on_host(x, k))
}

/// The device's answer if it is a top-k of `x`: `k` distinct indices in range per row, the
/// values found at them, largest first, and no element outside them above the smallest.
///
/// Everything the proof needs is computed on the device and read back in one transaction: on
/// a GPU each read-back is a synchronisation, and the online probe's accuracy ranks at every
/// training step. The gather uses the indices clamped into range, so a wrong index (lavapipe's
/// -1) cannot fault; the host then rejects it from the indices as returned.
fn proven(x: &Tensor<2>, values: Tensor<2>, indices: Tensor<2, Int>) -> Option<TopRows> {
    let [rows, len] = x.dims();
    let [_, k] = values.dims();
    let found = x
        .clone()
        .gather(1, indices.clone().clamp(0, len as i64 - 1));
    let smallest = values.clone().narrow(1, k - 1, 1).expand([rows, len]);
    let above = sum_rows(x.clone().greater(smallest).float());
    let [indices, values, found, above] = <[_; 4]>::try_from(
        Transaction::default()
            .register(indices)
            .register(values)
            .register(found)
            .register(above)
            .try_execute()
            .ok()?,
    )
    .ok()?;
    let floats = |data: TensorData| data.convert::<f32>().try_to_vec::<f32>().ok();
    let (top, found, above) = (floats(values)?, floats(found)?, floats(above)?);
    let indices: Vec<i64> = indices.convert::<i64>().try_to_vec().ok()?;
    if indices.iter().any(|&i| i < 0 || i as usize >= len) {
        return None;
    }
    let indices: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
    if indices.chunks(k).any(has_repeats) {
        return None;
    }
    // NaN != NaN: a row holding NaN is never proven, and the host ranks it.
    if top != found || top.chunks(k).any(|row| row.windows(2).any(|w| w[0] < w[1])) {
        return None;
    }
    // Every element above a row's smallest kept value must be one of the kept ones.
    let all_kept = top.chunks(k).zip(&above).all(|(row, &count)| {
        let kept_above = row.iter().filter(|&&v| v > row[k - 1]).count();
        count as usize == kept_above
    });
    all_kept.then_some(TopRows {
        k,
        values: top,
        indices,
        recomputed_on_host: false,
    })
}

fn has_repeats(row: &[usize]) -> bool {
    let mut sorted = row.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[0] == w[1])
}

/// Ranks every row on the host: a partial selection, then the `k` kept sorted.
fn on_host(x: Tensor<2>, k: usize) -> TopRows {
    let [rows, len] = x.dims();
    let data: Vec<f32> = x
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("a float tensor reads back as f32");
    let (values, indices): (Vec<Vec<f32>>, Vec<Vec<usize>>) = data
        .par_chunks(len)
        .map(|row| {
            let larger_first = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
            let mut order: Vec<usize> = (0..len).collect();
            if k < len {
                order.select_nth_unstable_by(k - 1, larger_first);
                order.truncate(k);
            }
            order.sort_unstable_by(larger_first);
            (order.iter().map(|&i| row[i]).collect(), order)
        })
        .unzip();
    debug_assert_eq!(values.len(), rows);
    let (values, indices) = (values.concat(), indices.concat());
    TopRows {
        k,
        values,
        indices,
        recomputed_on_host: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::host_values;
    use burn::tensor::Device;

    fn rows(values: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values, shape), &Device::default())
    }

    /// The reference: every row sorted on the host in float64, largest first.
    fn sorted_rows(values: &[f32], len: usize) -> Vec<Vec<f64>> {
        values
            .chunks(len)
            .map(|row| {
                let mut row: Vec<f64> = row.iter().map(|&v| v as f64).collect();
                row.sort_by(|a, b| b.total_cmp(a));
                row
            })
            .collect()
    }

    #[test]
    fn the_device_answer_is_proven_and_kept() {
        let (n, len, k) = (8, 2000, 200);
        let values = host_values(n * len, 3);
        let top = top_k_rows(rows(values.clone(), [n, len]), k);
        assert!(!top.recomputed_on_host, "the CPU's top-k is right");
        for (r, reference) in sorted_rows(&values, len).iter().enumerate() {
            let got: Vec<f64> = top.row_values(r).iter().map(|&v| v as f64).collect();
            assert_eq!(got, reference[..k]);
            for (&i, &v) in top.row_indices(r).iter().zip(top.row_values(r)) {
                assert_eq!(values[r * len + i], v);
            }
        }
    }

    #[test]
    fn the_host_ranking_matches_a_full_sort() {
        let (n, len) = (5, 333);
        let values = host_values(n * len, 9);
        for k in [1, 7, 64, 333] {
            let top = on_host(rows(values.clone(), [n, len]), k);
            assert!(top.recomputed_on_host);
            for (r, reference) in sorted_rows(&values, len).iter().enumerate() {
                let got: Vec<f64> = top.row_values(r).iter().map(|&v| v as f64).collect();
                assert_eq!(got, reference[..k], "row {r}, k = {k}");
                assert!(!has_repeats(top.row_indices(r)));
            }
        }
    }

    #[test]
    fn ties_on_the_host_are_ranked_by_index() {
        let top = on_host(rows(vec![1.0, 3.0, 3.0, 0.0, 3.0], [1, 5]), 3);
        assert_eq!(top.indices, [1, 2, 4]);
        assert_eq!(top.values, [3.0, 3.0, 3.0]);
    }

    /// What a broken device hands back (lavapipe's -1 indices, an index that points at another
    /// value, a set that misses a larger element, a repeat) fails the proof.
    #[test]
    fn wrong_answers_fail_the_proof() {
        let x = rows(vec![0.5, 0.9, 0.1, 0.7], [1, 4]);
        let device = Device::default();
        let attempt = |values: Vec<f32>, indices: Vec<i64>| {
            let k = values.len();
            proven(
                &x,
                Tensor::from_data(TensorData::new(values, [1, k]), &device),
                Tensor::from_data(TensorData::new(indices, [1, k]), &device),
            )
        };
        assert!(
            attempt(vec![0.9, 0.7], vec![1, 3]).is_some(),
            "the right answer"
        );
        assert!(
            attempt(vec![0.9, 0.7], vec![1, -1]).is_none(),
            "index out of range"
        );
        assert!(
            attempt(vec![0.9, 0.7], vec![1, 0]).is_none(),
            "value not at its index"
        );
        assert!(
            attempt(vec![0.9, 0.5], vec![1, 0]).is_none(),
            "0.7 left out"
        );
        assert!(
            attempt(vec![0.7, 0.9], vec![3, 1]).is_none(),
            "not largest first"
        );
        assert!(
            attempt(vec![0.9, 0.9], vec![1, 1]).is_none(),
            "a repeated index"
        );
    }

    #[test]
    fn a_row_with_nan_is_ranked_on_the_host() {
        let top = top_k_rows(rows(vec![0.5, f32::NAN, 0.1], [1, 3]), 2);
        assert!(top.recomputed_on_host);
        assert_eq!(top.indices, [1, 0]);
        assert!(top.values[0].is_nan());
    }
}
