//! Row kernels of the fused operations, written so the compiler vectorizes them (16 independent
//! lanes, a branch-free `exp`), and compiled for AVX-512 and AVX2 as well, used where the CPU has
//! them. The lanes are explicit, so every build sums in the same order.

const LANES: usize = 16;

/// Public kernels, each calling its `_impl` body compiled for AVX-512 or AVX2 when the CPU has
/// it.
macro_rules! multiversion {
    ($($(#[$doc:meta])* fn $name:ident($($a:ident: $t:ty),*) -> $r:ty = $imp:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($a: $t),*) -> $r {
                    $imp($($a),*)
                }
                // SAFETY: the CPU has AVX-512F (checked above).
                return unsafe { avx512($($a),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($a: $t),*) -> $r {
                    $imp($($a),*)
                }
                // SAFETY: the CPU has AVX2 (checked above).
                return unsafe { avx2($($a),*) };
            }
            $imp($($a),*)
        }
    )*};
}

multiversion! {
    fn max(row: &[f32]) -> f32 = max_impl;
    /// `Σ exp(x − m)`.
    fn sum_exp(row: &[f32], m: f32) -> f32 = sum_exp_impl;
    /// `x ← exp(x − m)` in place; returns `Σ exp(x − m)`.
    fn exp_in_place(row: &mut [f32], m: f32) -> f32 = exp_in_place_impl;
    /// `x ← g · exp(x − lse)` in place.
    fn scaled_softmax(row: &mut [f32], lse: f32, g: f32) -> () = scaled_softmax_impl;
    /// `x ← softmax(x)` in place (−∞ entries get 0); returns the log-sum-exp, `+∞` for a row
    /// that is all −∞ (which becomes all 0, and whose `exp(x − lse)` is 0 too).
    fn softmax(row: &mut [f32]) -> f32 = softmax_impl;
    /// `dp ← p · (dp − d) · scale`: the softmax backward pass of one row, `d = Σ dp·p`.
    fn softmax_grad(p: &[f32], dp: &mut [f32], d: f32, scale: f32) -> () = softmax_grad_impl;
    /// `Σ a·b`.
    fn dot(a: &[f32], b: &[f32]) -> f32 = dot_impl;
    /// `y = x / rms · γ`.
    fn rms_scale(x: &[f32], gamma: &[f32], rms: f32, y: &mut [f32]) -> () = rms_scale_impl;
    /// `dx = (dy·γ − x·Σ(dy·γ·x)/(n·rms²)) / rms`, the RMSNorm backward pass of one row.
    fn rms_norm_grad(dy: &[f32], x: &[f32], gamma: &[f32], rms: f32, dx: &mut [f32]) -> () = rms_norm_grad_impl;
    /// `out = silu(gate)·up`.
    fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) -> () = swiglu_impl;
    /// The gradients of `silu(gate)·up` given the output's, `g`.
    fn swiglu_grad(g: &[f32], gate: &[f32], up: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) -> () = swiglu_grad_impl;
}

#[inline(always)]
fn rms_scale_impl(x: &[f32], gamma: &[f32], rms: f32, y: &mut [f32]) {
    for ((y, &x), &g) in y.iter_mut().zip(x).zip(gamma) {
        *y = x / rms * g;
    }
}

#[inline(always)]
fn rms_norm_grad_impl(dy: &[f32], x: &[f32], gamma: &[f32], rms: f32, dx: &mut [f32]) {
    for ((dx, &dy), &g) in dx.iter_mut().zip(dy).zip(gamma) {
        *dx = dy * g;
    }
    let s = dot_impl(dx, x);
    let k = s / (x.len() as f32 * rms * rms);
    for (dx, &x) in dx.iter_mut().zip(x) {
        *dx = (*dx - x * k) / rms;
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn swiglu_impl(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &x), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = x * sigmoid(x) * u;
    }
}

#[inline(always)]
fn swiglu_grad_impl(g: &[f32], gate: &[f32], up: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    let rows = d_gate.iter_mut().zip(d_up.iter_mut());
    for ((dg, du), ((&g, &x), &u)) in rows.zip(g.iter().zip(gate).zip(up)) {
        let s = sigmoid(x);
        *du = g * x * s;
        *dg = g * u * s * (1.0 + x * (1.0 - s));
    }
}

#[inline(always)]
fn max_impl(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let m = rest.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    acc.iter().fold(m, |a, &b| a.max(b))
}

#[inline(always)]
fn sum_exp_impl(row: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += exp(c[i] - m);
        }
    }
    rest.iter().map(|&x| exp(x - m)).sum::<f32>() + acc.iter().sum::<f32>()
}

#[inline(always)]
fn exp_in_place_impl(row: &mut [f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp(c[i] - m);
            acc[i] += c[i];
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for x in chunks.into_remainder() {
        *x = exp(*x - m);
        sum += *x;
    }
    sum
}

#[inline(always)]
fn scaled_softmax_impl(row: &mut [f32], lse: f32, g: f32) {
    for x in row {
        *x = g * exp(*x - lse);
    }
}

#[inline(always)]
fn softmax_impl(row: &mut [f32]) -> f32 {
    let m = max_impl(row);
    if m == f32::NEG_INFINITY {
        row.fill(0.0);
        return f32::INFINITY;
    }
    let sum = exp_in_place_impl(row, m);
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
    m + sum.ln()
}

#[inline(always)]
fn softmax_grad_impl(p: &[f32], dp: &mut [f32], d: f32, scale: f32) {
    for (g, &p) in dp.iter_mut().zip(p) {
        *g = p * (*g - d) * scale;
    }
}

#[inline(always)]
fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    rest + acc.iter().sum::<f32>()
}

/// `eˣ` (Cephes' `expf`: `2ⁿ·eʳ` with `|r| ≤ ln2/2` and a degree-6 polynomial, within 2 ulp of
/// the correctly rounded result) for `x ≤ 88`; 0 below −87, −∞ included.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n is the low bits of t's mantissa: 2ⁿ from them, exponent bias 127.
    let bits = (t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23;
    let e = y * f32::from_bits(bits as u32);
    if x < -87.0 {
        0.0
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_two_ulp() {
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (exp(x), x.exp());
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, std {want}");
            x += 0.001_3;
        }
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_masked_entries_get_nothing() {
        let mut row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        row[3] = f32::NEG_INFINITY;
        let lse = softmax(&mut row);
        assert_eq!(row[3], 0.0);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let m = (0..37)
            .filter(|&i| i != 3)
            .map(|i| (i as f32 * 0.37).sin() * 5.0)
            .fold(f32::NEG_INFINITY, f32::max);
        let want = m
            + (0..37)
                .filter(|&i| i != 3)
                .map(|i| ((i as f32 * 0.37).sin() * 5.0 - m).exp())
                .sum::<f32>()
                .ln();
        assert!((lse - want).abs() < 1e-5, "{lse} vs {want}");
        let mut masked = vec![f32::NEG_INFINITY; 5];
        assert_eq!(softmax(&mut masked), f32::INFINITY);
        assert_eq!(masked, vec![0.0; 5]);
    }
}
