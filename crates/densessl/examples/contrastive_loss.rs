//! Times MoCo's InfoNCE against a queue (`densessl::pretext::losses::info_nce`), forward and
//! backward on the autodiff CPU backend, at the shapes of the pre-training methods: MoCo v2's
//! global loss (32 queries) and DenseCL's dense one (32 images × 7² cells), each against a
//! queue of 65,536 128-d keys. The fastest of 9 calls each.
//!
//! ```sh
//! cargo run --release --example contrastive_loss
//! ```

use burn::tensor::{Device, Distribution, Tensor};
use densessl::pretext::losses::{info_nce, l2_normalize};

#[path = "common/timing.rs"]
#[allow(dead_code)]
mod timing;
use timing::fastest_ms;

/// (name, queries, queue rows)
const SHAPES: [(&str, usize, usize); 2] = [("moco 32 x 65536", 32, 65_536), ("densecl 1568 x 65536", 32 * 49, 65_536)];

const DIM: usize = 128;

fn main() {
    densessl::runtime::configure();
    let device = Device::flex().autodiff();
    for (name, n, k) in SHAPES {
        let unit = |rows| l2_normalize(Tensor::<2>::random([rows, DIM], Distribution::Normal(0.0, 1.0), &device)).detach();
        let (queries, keys, queue) = (unit(n), unit(n), unit(k));
        let forward = fastest_ms(|| {
            let (loss, _) = info_nce(queries.clone(), keys.clone(), queue.clone(), 0.2);
            std::hint::black_box(loss.into_scalar::<f32>());
        });
        let both = fastest_ms(|| {
            let q = queries.clone().require_grad();
            let (loss, _) = info_nce(q.clone(), keys.clone(), queue.clone(), 0.2);
            let grads = loss.backward();
            std::hint::black_box(q.grad(&grads).unwrap().into_data());
        });
        println!("{name:22} fwd {forward:7.2} ms  fwd+bwd {both:7.2} ms");
    }
}
