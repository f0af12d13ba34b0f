//! What the kernels' element loops share so that the compiler vectorises them: a way to
//! compile a loop for AVX2 where the CPU has it, and an exponential written as plain
//! arithmetic (the standard library's `exp` is a call per element).

/// Runs `f` compiled for AVX2 where the CPU has it: the crate's baseline is SSE2, and loops
/// inlined into `f` vectorise 8 lanes wide instead of 4.
#[inline(always)]
pub(super) fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { run(f) };
    }
    f()
}

/// `eˣ` to within 2 ulp for `x` in [−87.3, 88]; below that range the result is `e^−87.3`
/// (about 1e-38) rather than smaller, above it `e^88`. NaN stays NaN. Cody–Waite reduction
/// `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, then Cephes' degree-6 polynomial for `eʳ`, scaled
/// by `2ⁿ` through the exponent bits. Comparisons rather than `max`/`min` do the clamping,
/// because those would turn a NaN into the bound.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    // `n = round(x·log₂e)`, also left in the low bits of `shifted` as `0x4B40_0000 + n`.
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r
        + 5.000_000_1e-1;
    let e = p * (r * r) + r + 1.0;
    // `2ⁿ` from the exponent bits, `n ∈ [−126, 127]` here, without a float-to-integer
    // conversion (Rust's saturating `as` does not vectorise). A NaN keeps `e` NaN.
    let two_to_n = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    e * two_to_n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_over_its_range() {
        let mut worst = 0.0f64;
        for i in 0..=2_000_000 {
            let x = -87.3 + (88.0 + 87.3) * i as f32 / 2_000_000.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        // One ulp of f32 is 2⁻²³ ≈ 1.19e-7 relative at most.
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(-1e4), exp(-87.3));
    }
}
