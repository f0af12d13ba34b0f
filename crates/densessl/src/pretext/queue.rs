//! The negative-key queue of momentum-contrast methods (MoCo, EDMoCo, PLMoCo, DenseCL): a
//! fixed ring of unit rows, the oldest overwritten first.

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::losses::l2_normalize;

/// A ring buffer of `[size, dim]` unit rows without gradient.
#[derive(Debug, Clone)]
pub struct KeyQueue {
    rows: Tensor<2>,
    ptr: usize,
}

impl KeyQueue {
    /// A queue filled with random unit rows drawn from `seed` (MoCo's initial queue).
    pub fn random(size: usize, dim: usize, seed: u64, device: &Device) -> Self {
        assert!(size > 0 && dim > 0, "a queue needs rows and columns");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data: Vec<f32> = (0..size * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let rows = l2_normalize(Tensor::from_data(TensorData::new(data, [size, dim]), device)).detach();
        Self { rows, ptr: 0 }
    }

    /// The rows, `[size, dim]`.
    pub fn rows(&self) -> Tensor<2> {
        self.rows.clone()
    }

    /// Where the next row is written.
    pub fn position(&self) -> usize {
        self.ptr
    }

    /// Puts back saved rows and write position (a resumed run); the shape must not change.
    pub fn restore(&mut self, rows: Tensor<2>, position: usize) -> std::result::Result<(), String> {
        let dims = self.rows.dims();
        if rows.dims() != dims || position >= dims[0] {
            return Err(format!("saved queue {:?} at {position} does not fit a queue of {dims:?}", rows.dims()));
        }
        self.rows = rows.detach();
        self.ptr = position;
        Ok(())
    }

    /// Writes `keys` (`[n, dim]`) at the pointer, wrapping around; the oldest rows go first.
    pub fn push(&mut self, keys: Tensor<2>) {
        let [n, d] = keys.dims();
        let size = self.rows.dims()[0];
        let keys = keys.detach();
        let mut written = 0;
        while written < n {
            let count = (n - written).min(size - self.ptr);
            let part = keys.clone().slice([written..written + count]);
            // Moved out, not cloned: a queue held only here is written in place, where a
            // second reference would make the backend copy all of it (32 MB at 65,536 × 128).
            let rows = std::mem::replace(&mut self.rows, Tensor::zeros([1, 1], &keys.device()));
            self.rows = rows.slice_assign([self.ptr..self.ptr + count, 0..d], part);
            self.ptr = (self.ptr + count) % size;
            written += count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_wraps_around_and_keeps_the_newest() {
        let device = Device::flex();
        let mut queue = KeyQueue::random(5, 8, 1, &device);
        let rows = |start: f32| {
            Tensor::<2>::from_data(TensorData::new((0..3 * 8).map(|i| start + i as f32).collect::<Vec<f32>>(), [3, 8]), &device)
        };
        queue.push(rows(0.0));
        queue.push(rows(100.0));
        assert_eq!(queue.position(), 1);
        let q: Vec<f32> = queue.rows().into_data().try_to_vec().unwrap();
        assert_eq!(q[0], 116.0); // row 2 of the second batch wrapped to slot 0
        assert_eq!(q[3 * 8], 100.0); // row 0 of the second batch at slot 3
        assert_eq!(q[2 * 8], 16.0); // the first batch's last row kept at slot 2
    }

    #[test]
    fn random_rows_are_unit_vectors() {
        let queue = KeyQueue::random(4, 3, 9, &Device::flex());
        let q: Vec<f32> = queue.rows().into_data().try_to_vec().unwrap();
        for row in q.chunks(3) {
            assert!((row.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}
