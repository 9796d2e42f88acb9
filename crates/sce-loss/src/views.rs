use burn::tensor::Tensor;

use crate::{LossError, QueueObjective};

/// Which view is scored against which: the pairs `(online view j, target view i)`.
///
/// - Asymmetric (small datasets): the target encodes view 0 (weak), the online branch views
///   1..C−1, and each online view is scored against key 0.
/// - Symmetric (ImageNet): the target encodes the `global` first views, the online branch all C
///   views, and every `(j, i)` with `j != i` is scored: 2 views give 2 terms, 2 global + 4 local
///   crops give 10, all weighted equally.
///
/// Only the target views' keys (the global crops) are enqueued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewPairing {
    Asymmetric { views: usize },
    Symmetric { views: usize, global: usize },
}

impl ViewPairing {
    /// Checks that the counts make at least one pair.
    pub fn validate(&self) -> Result<(), LossError> {
        let ok = match *self {
            ViewPairing::Asymmetric { views } => views >= 2,
            ViewPairing::Symmetric { views, global } => {
                global >= 1 && views >= 2 && global <= views
            }
        };
        if ok {
            Ok(())
        } else {
            Err(LossError::Shape(format!(
                "{self:?} makes no (online, target) pair: it needs at least 2 views and \
                 1 <= global <= views"
            )))
        }
    }

    /// Total number of views C.
    pub fn views(&self) -> usize {
        match *self {
            ViewPairing::Asymmetric { views } | ViewPairing::Symmetric { views, .. } => views,
        }
    }

    /// Views the target branch encodes; their keys are enqueued.
    pub fn target_views(&self) -> std::ops::Range<usize> {
        match *self {
            ViewPairing::Asymmetric { .. } => 0..1,
            ViewPairing::Symmetric { global, .. } => 0..global,
        }
    }

    /// Views the online branch encodes.
    pub fn online_views(&self) -> std::ops::Range<usize> {
        match *self {
            ViewPairing::Asymmetric { views } => 1..views,
            ViewPairing::Symmetric { views, .. } => 0..views,
        }
    }

    /// Every scored `(online view, target view)` pair; each term weighs `1 / pairs().len()`.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        self.target_views()
            .flat_map(|i| {
                self.online_views()
                    .filter(move |&j| j != i)
                    .map(move |j| (j, i))
            })
            .collect()
    }
}

/// Mean of `objective(q_j, k_i, queue)` over the pairing's pairs.
///
/// `online[n]` is the embedding of view `online_views().start + n` and `target[n]` the key of
/// view `target_views().start + n`.
pub fn multi_view_loss(
    objective: &dyn QueueObjective,
    pairing: &ViewPairing,
    online: &[Tensor<2>],
    target: &[Tensor<2>],
    queue: Tensor<2>,
) -> Result<Tensor<1>, LossError> {
    pairing.validate()?;
    let (online_views, target_views) = (pairing.online_views(), pairing.target_views());
    if online.len() != online_views.len() || target.len() != target_views.len() {
        return Err(LossError::Shape(format!(
            "{pairing:?} needs {} online and {} target embeddings, got {} and {}",
            online_views.len(),
            target_views.len(),
            online.len(),
            target.len()
        )));
    }
    let pairs = pairing.pairs();
    let mut total: Option<Tensor<1>> = None;
    for &(j, i) in &pairs {
        let q = online[j - online_views.start].clone();
        let k = target[i - target_views.start].clone();
        let term = objective.forward(q, k, queue.clone())?;
        total = Some(match total {
            Some(sum) => sum + term,
            None => term,
        });
    }
    let total = total.expect("validate() guarantees at least one pair");
    Ok(total / pairs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SceLoss;
    use crate::test_util::*;

    #[test]
    fn pair_counts_of_the_recipes() {
        let asym = ViewPairing::Asymmetric { views: 2 };
        assert_eq!(asym.pairs(), vec![(1, 0)]);
        let sym = ViewPairing::Symmetric {
            views: 2,
            global: 2,
        };
        assert_eq!(sym.pairs(), vec![(1, 0), (0, 1)]);
        let multi = ViewPairing::Symmetric {
            views: 6,
            global: 2,
        };
        let pairs = multi.pairs();
        assert_eq!(pairs.len(), 10);
        // Each global online crop once (against the other global), each local crop twice.
        for j in 0..6 {
            let count = pairs.iter().filter(|(o, _)| *o == j).count();
            assert_eq!(count, if j < 2 { 1 } else { 2 }, "view {j}");
        }
        assert!(pairs.iter().all(|(o, t)| o != t && *t < 2));
        assert_eq!(multi.target_views(), 0..2);
        let asym4 = ViewPairing::Asymmetric { views: 4 };
        assert_eq!(asym4.pairs(), vec![(1, 0), (2, 0), (3, 0)]);
        assert!(ViewPairing::Asymmetric { views: 1 }.validate().is_err());
    }

    /// The aggregate equals the equal-weight mean of the individual terms.
    #[test]
    fn multi_crop_loss_is_the_equal_weight_mean() {
        let device = device();
        let loss = SceLoss::new(0.1, 0.05, 0.5).unwrap();
        let queue = random_unit_rows(12, 4, 50, &device);
        let pairing = ViewPairing::Symmetric {
            views: 4,
            global: 2,
        };
        let online: Vec<_> = (0..4)
            .map(|v| random_unit_rows(3, 4, 60 + v, &device))
            .collect();
        let target: Vec<_> = (0..2)
            .map(|v| random_unit_rows(3, 4, 70 + v, &device))
            .collect();
        let got =
            scalar(multi_view_loss(&loss, &pairing, &online, &target, queue.clone()).unwrap());
        let mut expected = 0.0;
        for (j, i) in pairing.pairs() {
            expected += scalar(
                loss.forward(online[j].clone(), target[i].clone(), queue.clone())
                    .unwrap(),
            );
        }
        expected /= 6.0;
        assert_close(got, expected, 1e-6);

        let asym = ViewPairing::Asymmetric { views: 3 };
        let got = scalar(
            multi_view_loss(&loss, &asym, &online[1..3], &target[..1], queue.clone()).unwrap(),
        );
        let expected = (scalar(
            loss.forward(online[1].clone(), target[0].clone(), queue.clone())
                .unwrap(),
        ) + scalar(
            loss.forward(online[2].clone(), target[0].clone(), queue)
                .unwrap(),
        )) / 2.0;
        assert_close(got, expected, 1e-6);
    }

    #[test]
    fn wrong_number_of_embeddings_is_an_error() {
        let device = device();
        let loss = SceLoss::new(0.1, 0.05, 0.5).unwrap();
        let x = random_unit_rows(2, 4, 1, &device);
        let err = multi_view_loss(
            &loss,
            &ViewPairing::Asymmetric { views: 3 },
            std::slice::from_ref(&x),
            std::slice::from_ref(&x),
            x.clone(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("needs 2 online"), "{err}");
    }
}
