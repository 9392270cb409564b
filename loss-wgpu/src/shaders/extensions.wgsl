// The logits' element type and loss-core's extensions (soft-cap, z-loss, position weights, the
// per-position LSE output), for every row kernel (`row.wgsl`, `narrow.wgsl`, `fused.wgsl`).
//
// They are compile-time constants of each pipeline: the host prepends `EXT`, the extension bits of
// the variant (`FLAG_ZLOSS` … `FLAG_F16`, `context.rs`). A plain `f32` problem runs the variant
// `EXT = 0`, in which every branch below is a constant `false` and the kernels are the plain ones
// (the logits are read as `f32` bits, which costs nothing).
//
// Elements: the logits (and probability targets) are bound as `array<u32>` and widened here, in
// the one accessor each kernel reads them through, so a half problem differs from the `f32`
// problem of its widened values only in how elements are loaded: the arithmetic after the load is
// the same `f32` arithmetic, bit for bit. bf16 is the top half of an `f32` (a shift); f16 is
// widened by hand on the bits (`f16_to_f32`: sign, exponent rebased, subnormals scaled exactly,
// infinities and NaN built as bits), not with `unpack2x16float`, whose result WGSL leaves to the
// implementation for infinities and NaN (masked classes are −∞). `shader-f16` is not used: it
// would give f16 arithmetic, and the kernels want `f32` arithmetic on widened values.

const X_ZLOSS: bool = (EXT & FLAG_ZLOSS) != 0u;
const X_SOFTCAP: bool = (EXT & FLAG_SOFTCAP) != 0u;
const X_POSW: bool = (EXT & FLAG_POSITION_WEIGHT) != 0u;
const X_LSE: bool = (EXT & FLAG_LSE) != 0u;
// The z part is reduced apart from the cross-entropy (sum, mean), not added into the loss slot.
const X_Z_APART: bool = (EXT & FLAG_Z_APART) != 0u;
const X_BF16: bool = (EXT & FLAG_BF16) != 0u;
const X_F16: bool = (EXT & FLAG_F16) != 0u;
const X_HALF: bool = X_BF16 || X_F16;

// The f16 of the low 16 bits of `h`, exactly, as an f32.
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0x1fu) {
        // Infinities and NaN (payload kept, shifted into place).
        return bitcast<f32>(sign | 0x7f800000u | (m << 13u));
    }
    if (e == 0u) {
        // Zero and subnormals: m·2^-24, exact in f32 (m < 2^10); the sign by bits.
        return bitcast<f32>(sign | bitcast<u32>(f32(m) * 5.9604644775390625e-8));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// Element `i` of a half tensor, from the word that holds it.
fn widen_half(word: u32, i: u32) -> f32 {
    let odd = (i & 1u) == 1u;
    if (X_BF16) {
        return bitcast<f32>(select(word << 16u, word & 0xffff0000u, odd));
    }
    return f16_to_f32(select(word & 0xffffu, word >> 16u, odd));
}

// Logit `i` as stored (widened).
fn raw_logit(i: u32) -> f32 {
    if (X_HALF) {
        return widen_half(logits[i >> 1u], i);
    }
    return bitcast<f32>(logits[i]);
}

// Probability target `i` (widened).
fn target_prob(i: u32) -> f32 {
    if (X_HALF) {
        return widen_half(targets[i >> 1u], i);
    }
    return bitcast<f32>(targets[i]);
}

// tanh in f32 for the soft-cap (Cephes' `tanhf`, in the form without cancellation).
//
// Error bound: for |t| < 0.625 an odd minimax polynomial of degree 11 (Cephes' coefficients,
// relative error below 1.3e-7 ≈ 2 ulp, which includes its f32 evaluation). For |t| ≥ 0.625 it is
// (1 − e)/(1 + e) with e = exp(−2|t|) ≤ 0.29: no cancellation, and an error δ of exp moves the
// result by at most 0.62·δ relatively, so the error is at most 0.62·ε_exp + ε_div + 1 ulp, where
// ε_exp and ε_div are the device's exp and division errors (WGSL allows 3 + 2·|x| ulp and 2.5
// ulp; on IEEE-grade devices such as lavapipe both are within about 2 ulp): at most 3–4 ulp
// there. Measured on lavapipe over 200,001 arguments in [−40, 40] plus the corners
// (`tests/extensions.rs`, `softcap_is_accurate`), the capped logit a·tanh(x/a) (which adds the
// rounding of x·(1/a) and of the product) is within 3.2 ulp of its f64 value (2.5 for a = 4 and
// 8, where 1/a is exact); the test holds every device to 8. ±∞ give ±1 (so −∞ is capped to
// −a), NaN stays NaN (through arithmetic only: no comparison decides it).
fn tanh_f32(t: f32) -> f32 {
    let u = abs(t);
    if (u < 0.625) {
        let q = t * t;
        let p = (((-5.70498872745e-3 * q + 2.06390887954e-2) * q - 5.37397155531e-2) * q
            + 1.33314422036e-1) * q - 3.33332819422e-1;
        return t + t * (q * p);
    }
    let e = exp(-2.0 * u);
    let r = (1.0 - e) / (1.0 + e);
    return select(r, -r, t < 0.0);
}

// Logit `i` as the loss sees it: widened, then soft-capped (`x̃ = a·tanh(x/a)`) in variants with
// the cap. Every kernel reads logits through this function (the narrow tile stores its values).
fn load_logit(i: u32) -> f32 {
    let x = raw_logit(i);
    if (X_SOFTCAP) {
        return params.softcap * tanh_f32(x * params.inv_softcap);
    }
    return x;
}

// The weight `s_i` of a position (1 without position weights).
fn position_weight(position: u32) -> f32 {
    if (X_POSW) {
        return grad_output[params.positions + position];
    }
    return 1.0;
}

// Writes what a position contributes besides its gradient: with `write_loss`, the loss slot
// (`s_i·L_i`, plus the z part `z·s_i·LSE²` unless that is reduced apart) and, in z-loss variants,
// the z part itself (0 at an ignored position); the LSE in variants that report it (ignored
// positions included). `ce` is the cross-entropy `L_i` (0 when ignored), `valid` whether the
// position counts.
fn store_position(position: u32, ce: f32, lse: f32, valid: bool, write_loss: bool) {
    let n = params.positions;
    if (write_loss) {
        var loss = ce;
        if (X_POSW) {
            loss = position_weight(position) * ce;
        }
        if (X_ZLOSS) {
            var zp = 0.0;
            if (valid) {
                zp = params.z * position_weight(position) * lse * lse;
            }
            row_loss[n + position] = zp;
            if (!X_Z_APART) {
                loss = loss + zp;
            }
        }
        row_loss[position] = loss;
    }
    if (X_LSE) {
        row_loss[2u * n + position] = lse;
    }
}

// The factors of a valid position's gradient: `.x` scales the cross-entropy's gradient (the
// upstream scale `g` as the kernel sees it, times `s_i`), `.y` is the z part's coefficient of
// `p[c]` (`2·z·s_i·LSE` times the z part's upstream scale: `params.z_coef`, times `g_i` when the
// upstream gradient is per position).
fn grad_factors(position: u32, g: f32, per_position: bool, lse: f32) -> vec2<f32> {
    let s = position_weight(position);
    var scale = g;
    if (X_POSW) {
        scale = g * s;
    }
    var zc = 0.0;
    if (X_ZLOSS) {
        var k = params.z_coef;
        if (per_position) {
            k = grad_output[position] * k;
        }
        zc = k * s * lse;
    }
    return vec2<f32>(scale, zc);
}

// A valid position's gradient element from its cross-entropy part `g`: plus the z part's
// `zc·p`, times the soft-cap's chain factor `1 − (x̃/a)²` at the capped logit `x`.
fn finish_grad(g: f32, p: f32, zc: f32, x: f32) -> f32 {
    var r = g;
    if (X_ZLOSS) {
        r = r + zc * p;
    }
    if (X_SOFTCAP) {
        let t = x * params.inv_softcap;
        r = r * ((1.0 - t) * (1.0 + t));
    }
    return r;
}
