//! Block dequantizers for GGML quantization types.
//!
//! Each mirrors `dequantize_row_*` in ggml-quants.c (and `gguf/quants.py`) including the order
//! of float operations, so results match the reference bit for bit.

use anyhow::{bail, Result};
use half::f16;

use super::GgmlType;

/// Bytes taken by `n_elements` of `ty`, or None when that is not a whole number of blocks or
/// the size overflows.
pub fn byte_size(ty: GgmlType, n_elements: usize) -> Option<usize> {
    if !n_elements.is_multiple_of(ty.block_size()) {
        return None;
    }
    (n_elements / ty.block_size()).checked_mul(ty.type_size())
}

/// Decodes `n_elements` values of type `ty` from exactly their `bytes`. Supports F32, F16, BF16,
/// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K; other types are an error.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    let Some(expected) = byte_size(ty, n_elements) else {
        bail!(
            "{n_elements} elements is not a whole number of {ty} blocks of {}",
            ty.block_size()
        );
    };
    if bytes.len() != expected {
        bail!(
            "{n_elements} {ty} elements take {expected} bytes, got {}",
            bytes.len()
        );
    }
    let mut out = vec![0f32; n_elements];
    match ty {
        GgmlType::F32 => blocks(bytes, &mut out, |b: &[u8; 4], y: &mut [f32; 1]| {
            y[0] = f32::from_le_bytes(*b)
        }),
        GgmlType::F16 => blocks(bytes, &mut out, |b: &[u8; 2], y: &mut [f32; 1]| {
            y[0] = f16::from_le_bytes(*b).to_f32()
        }),
        GgmlType::BF16 => blocks(bytes, &mut out, |b: &[u8; 2], y: &mut [f32; 1]| {
            y[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16)
        }),
        GgmlType::Q8_0 => blocks(bytes, &mut out, q8_0),
        GgmlType::Q4_0 => blocks(bytes, &mut out, q4_0),
        GgmlType::Q4_1 => blocks(bytes, &mut out, q4_1),
        GgmlType::Q5_0 => blocks(bytes, &mut out, q5_0),
        GgmlType::Q5_1 => blocks(bytes, &mut out, q5_1),
        GgmlType::Q4_K => blocks(bytes, &mut out, q4_k),
        GgmlType::Q5_K => blocks(bytes, &mut out, q5_k),
        GgmlType::Q6_K => blocks(bytes, &mut out, q6_k),
        _ => bail!("unsupported quantization type {ty} (id {})", ty.id()),
    }
    Ok(out)
}

/// Applies `f` to each `B`-byte block and its `N` output values. The caller has checked that
/// the lengths agree, so `as_chunks` leaves no remainder.
fn blocks<const B: usize, const N: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; N]),
) {
    for (b, y) in bytes
        .as_chunks::<B>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<N>().0)
    {
        f(b, y);
    }
}

fn half(lo: u8, hi: u8) -> f32 {
    f16::from_le_bytes([lo, hi]).to_f32()
}

// block_q8_0: d (f16), qs[32] (i8).
fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = half(b[0], b[1]);
    for (y, &q) in y.iter_mut().zip(&b[2..]) {
        *y = f32::from(q as i8) * d;
    }
}

// block_q4_0: d (f16), qs[16]: element j in the low nibble of qs[j], element j+16 in the high.
fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = half(b[0], b[1]);
    for (j, &q) in b[2..].iter().enumerate() {
        y[j] = f32::from((q & 0xF) as i8 - 8) * d;
        y[j + 16] = f32::from((q >> 4) as i8 - 8) * d;
    }
}

// block_q4_1: d (f16), m (f16), qs[16] laid out as in q4_0.
fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = half(b[0], b[1]);
    let m = half(b[2], b[3]);
    for (j, &q) in b[4..].iter().enumerate() {
        y[j] = f32::from(q & 0xF) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// The 5-bit values of a Q5_0/Q5_1 block: the low 4 bits as in Q4_0, the fifth bit of element
/// `j` in bit `j` of the little-endian u32 `qh`.
fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; 32];
    for (j, &byte) in qs.iter().enumerate() {
        let high = |bit: usize| (((qh >> bit) & 1) as u8) << 4;
        q[j] = (byte & 0xF) | high(j);
        q[j + 16] = (byte >> 4) | high(j + 16);
    }
    q
}

// block_q5_0: d (f16), qh[4], qs[16]; values are the 5-bit numbers minus 16, times d.
fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = half(b[0], b[1]);
    for (y, q) in y.iter_mut().zip(q5_values(&b[2..6], &b[6..])) {
        *y = f32::from(q as i8 - 16) * d;
    }
}

// block_q5_1: d (f16), m (f16), qh[4], qs[16]; values are the 5-bit numbers times d, plus m.
fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = half(b[0], b[1]);
    let m = half(b[2], b[3]);
    for (y, q) in y.iter_mut().zip(q5_values(&b[4..8], &b[8..])) {
        *y = f32::from(q) * d + m;
    }
}

/// The j-th 6-bit (scale, min) pair of the 12 packed scale bytes of Q4_K/Q5_K
/// (`get_scale_min_k4`): pairs 0..4 sit in the low 6 bits of bytes 0..8, pairs 4..8 are split
/// between the nibbles of bytes 8..12 and the top 2 bits of bytes 0..8.
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}

// block_q4_K: d (f16), dmin (f16), scales[12], qs[128]. Each 64-element group uses 32 bytes of
// qs (low nibbles first, then high) and two (scale, min) pairs.
fn q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    let d = half(b[0], b[1]);
    let dmin = half(b[2], b[3]);
    let scales = &b[4..16];
    for (g, (qs, y)) in b[16..]
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (lo, hi) = y.split_at_mut(32);
        for ((&q, lo), hi) in qs.iter().zip(lo).zip(hi) {
            *lo = d1 * f32::from(q & 0xF) - m1;
            *hi = d2 * f32::from(q >> 4) - m2;
        }
    }
}

// block_q5_K: d (f16), dmin (f16), scales[12], qh[32], qs[128]. As Q4_K, plus a fifth bit per
// element from qh: bit 2g for the low-nibble half of group g, bit 2g+1 for the high half.
fn q5_k(b: &[u8; 176], y: &mut [f32; 256]) {
    let d = half(b[0], b[1]);
    let dmin = half(b[2], b[3]);
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (g, (qs, y)) in b[48..]
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (lo, hi) = y.split_at_mut(32);
        for (((&q, &h), lo), hi) in qs.iter().zip(qh).zip(lo).zip(hi) {
            let h = h >> (2 * g);
            *lo = d1 * f32::from((q & 0xF) | ((h & 1) << 4)) - m1;
            *hi = d2 * f32::from((q >> 4) | ((h & 2) << 3)) - m2;
        }
    }
}

// block_q6_K: ql[128], qh[64], scales[16] (i8), d (f16). Each 128-element half uses 64 bytes of
// ql, 32 of qh and 8 scales; element l of each 32-element quarter k takes 4 bits from ql and
// bits 2k..2k+2 of qh[l], and one scale per 16 elements.
fn q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let d = half(b[208], b[209]);
    for (n, y) in y.chunks_exact_mut(128).enumerate() {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        for l in 0..32 {
            let is = l / 16;
            let h = qh[l];
            let q1 = (ql[l] & 0xF) | ((h & 3) << 4);
            let q2 = (ql[l + 32] & 0xF) | (((h >> 2) & 3) << 4);
            let q3 = (ql[l] >> 4) | (((h >> 4) & 3) << 4);
            let q4 = (ql[l + 32] >> 4) | (((h >> 6) & 3) << 4);
            let scaled = |s: u8, q: u8| d * f32::from(s as i8) * f32::from(q as i8 - 32);
            y[l] = scaled(sc[is], q1);
            y[l + 32] = scaled(sc[is + 2], q2);
            y[l + 64] = scaled(sc[is + 4], q3);
            y[l + 96] = scaled(sc[is + 6], q4);
        }
    }
}
