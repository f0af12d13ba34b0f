//! Batch norm with statistics per group of images (`densessl::kernels::batch_norm_groups`),
//! the key encoders' shuffle-BN substitute, against its definition: forwarding each group on
//! its own. The kernels exactly, group by group; a narrow ResNet and a projector with batch
//! norm, outputs and running statistics; a differentiated input (burn's operations) too.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Tensor};
use densessl::kernels::batch_norm_cpu::{self, Epilogue, Planes};
use densessl::kernels::batch_norm_groups::with_batch_norm_groups;
use densessl::kernels::batch_norm_rows::{self, Rows};
use densessl::models::projector::MlpConfig;
use densessl::models::resnet::{ResNet, ResNetConfig};

mod kernel_parity;
use kernel_parity::{max_relative_difference, values};

/// The convolutions multiply a group's rows with the rest of the batch instead of alone,
/// which may change float32 rounding; batch norm then amplifies a difference by up to 1/σ.
const TOLERANCE: f32 = 1e-4;

fn random(len: usize, mean: f64, seed: u64) -> Vec<f32> {
    let device = Device::flex();
    device.seed(seed);
    values(Tensor::<1>::random([len], Distribution::Normal(mean, 2.0), &device))
}

/// Each group's output and statistics are bit for bit those of the ungrouped kernel on that
/// group alone, in both layouts, plain and with a residual and ReLU, with a shorter last group.
#[test]
fn grouped_kernels_equal_each_group_alone() {
    let ([n, c, s], per_group) = ([7, 12, 10], 3);
    let (x, residual) = (random(n * c * s, 1.0, 1), random(n * c * s, 0.0, 2));
    let (gamma, beta) = (random(c, 1.0, 3), random(c, 0.0, 4));
    let image = c * s;
    for with_residual in [false, true] {
        let epilogue = |range: std::ops::Range<usize>| Epilogue { residual: with_residual.then(|| &residual[range]), relu: with_residual };
        let whole = epilogue(0..n * image);
        let planes = batch_norm_cpu::forward_grouped(&x, &gamma, &beta, 1e-5, Planes { batch: n, channels: c, plane: s }, per_group, whole);
        let rows = Rows { rows: n * s, channels: c };
        let by_rows = batch_norm_rows::forward_grouped(&x, &gamma, &beta, 1e-5, rows, per_group * s, whole);
        let (mut outputs, mut means, mut variances) = (Vec::new(), Vec::new(), Vec::new());
        let (mut row_outputs, mut row_means, mut row_variances) = (Vec::new(), Vec::new(), Vec::new());
        for start in (0..n).step_by(per_group) {
            let images = per_group.min(n - start);
            let range = start * image..(start + images) * image;
            let alone = Planes { batch: images, channels: c, plane: s };
            let (y, mean, variance) = batch_norm_cpu::forward_then(&x[range.clone()], &gamma, &beta, 1e-5, alone, epilogue(range.clone()));
            outputs.extend(y);
            means.extend(mean);
            variances.extend(variance);
            let alone = Rows { rows: images * s, channels: c };
            let (y, mean, variance) = batch_norm_rows::forward_then(&x[range.clone()], &gamma, &beta, 1e-5, alone, epilogue(range));
            row_outputs.extend(y);
            row_means.extend(mean);
            row_variances.extend(variance);
        }
        assert_eq!(means.len(), 3 * c, "three groups: 3, 3 and 1 images");
        assert_eq!(planes, (outputs, means, variances), "planes, residual {with_residual}");
        assert_eq!(by_rows, (row_outputs, row_means, row_variances), "rows, residual {with_residual}");
    }
}

/// A narrow ResNet-18 and a copy with the same weights and its own running statistics.
fn two_resnets(device: &Device) -> (ResNet, ResNet) {
    device.seed(7);
    let net = ResNetConfig::new().with_base_width(8).init(device);
    // Loading a record gives the copy running statistics of its own (a clone would share them).
    let copy = ResNetConfig::new().with_base_width(8).init(device).load_record(net.clone().into_record());
    (net, copy)
}

/// Every batch norm's running mean and variance, in visiting order.
fn running_statistics<M: Module>(module: &M) -> Vec<f32> {
    struct Collect {
        path: Vec<String>,
        values: Vec<f32>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.path.last().is_some_and(|name| name == "running_mean" || name == "running_var") {
                self.values.extend(values(param.val()));
            }
        }
    }
    let mut collect = Collect { path: Vec::new(), values: Vec::new() };
    module.visit(&mut collect);
    assert!(!collect.values.is_empty(), "the module has batch norms");
    collect.values
}

/// One forward of the whole batch in a grouped scope equals forwarding the groups one by one:
/// C5 of a narrow ResNet (batch norms plain, fused with ReLU and with a residual) and every
/// running statistic, moved once per group. Without gradients (the key encoder's case, the
/// CPU kernels) and with them (burn's operations, group by group).
#[test]
fn grouped_resnet_forward_equals_group_by_group() {
    let device = Device::flex().autodiff();
    for tracked in [false, true] {
        let (grouped, reference) = two_resnets(&device);
        let (grouped, reference) = if tracked { (grouped, reference) } else { (grouped.no_grad(), reference.no_grad()) };
        let before = running_statistics(&grouped);
        device.seed(8);
        let x = Tensor::<4>::random([7, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let ours = with_batch_norm_groups(3, || grouped.forward(x.clone()).c5);
        let parts: Vec<Tensor<4>> = [0..3, 3..6, 6..7].into_iter().map(|r| reference.forward(x.clone().slice([r])).c5).collect();
        let expected = Tensor::cat(parts, 0);
        let d = max_relative_difference(&values(ours.clone()), &values(expected));
        assert!(d < TOLERANCE, "tracked {tracked}: C5 differs by {d:.1e}");
        let (after, expected) = (running_statistics(&grouped), running_statistics(&reference));
        assert_ne!(after, before, "the running statistics moved");
        let d = max_relative_difference(&after, &expected);
        assert!(d < TOLERANCE, "tracked {tracked}: running statistics differ by {d:.1e}");
        if tracked {
            let grads = ours.sum().backward();
            assert!(grouped.conv1.weight.grad(&grads).is_some(), "the grouped forward passes gradients");
        }
    }
}

/// The same for a projector whose hidden and last layers have batch norm (`[B, C]` inputs),
/// and outside a grouped scope the batch is one group again.
#[test]
fn grouped_projector_forward_equals_group_by_group() {
    let device = Device::flex().autodiff();
    device.seed(9);
    let config = MlpConfig::new(vec![16, 32, 8]).with_last_batch_norm(true);
    let net = config.init(&device).no_grad();
    let reference = config.init(&device).no_grad().load_record(net.clone().into_record());
    let x = Tensor::<2>::random([10, 16], Distribution::Normal(1.0, 2.0), &device);
    let ours = with_batch_norm_groups(4, || net.forward(x.clone()));
    let parts: Vec<Tensor<2>> = [0..4, 4..8, 8..10].into_iter().map(|r| reference.forward(x.clone().slice([r]))).collect();
    let d = max_relative_difference(&values(ours), &values(Tensor::cat(parts, 0)));
    assert!(d < TOLERANCE, "projector output differs by {d:.1e}");
    let d = max_relative_difference(&running_statistics(&net), &running_statistics(&reference));
    assert!(d < TOLERANCE, "running statistics differ by {d:.1e}");
    let whole = values(net.forward(x.clone()));
    let grouped_again = values(with_batch_norm_groups(4, || net.forward(x.clone())));
    assert!(max_relative_difference(&whole, &grouped_again) > 1e-3, "outside the scope all 10 images share statistics");
}
