// Narrows an `f32` gradient to a half type on the device: word `k` of `dst` gets elements `2k`
// (low half) and `2k + 1` (high half; 0 past the end), each rounded once to nearest even. The
// gradient kernels write `f32` (in none of them do the two elements of a word belong to one
// invocation: `fused_main` gives neighbouring classes to neighbouring invocations, rows of odd
// length share words, strided rows interleave), so this pass packs them, reading 4 bytes and
// writing 2 per element, and the host reads back half the bytes.
//
// Rounding is done on the bits, in integers (no float operation, so no flush of subnormals and no
// implementation-defined conversion: WGSL leaves `pack2x16float` indeterminate out of the f16
// range): bf16 with the usual `bits + 0x7fff + lsb` and NaN kept NaN (quiet, payload's top bits);
// f16 as the `half` crate's conversion does it (subnormals rounded to nearest even, overflow to
// ±∞, NaN quiet). `WG` is prepended by the host; the bindings are the reduction's layout.

struct Params {
    n: u32,
    src_offset: u32,
    dst_offset: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// The f32 gradient, as bits.
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

fn bf16_bits(b: u32) -> u32 {
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return (b >> 16u) | 0x40u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

fn f16_bits(b: u32) -> u32 {
    let sign = (b >> 16u) & 0x8000u;
    let exp = (b >> 23u) & 0xffu;
    let man = b & 0x7fffffu;
    if (exp == 0xffu) {
        // Infinity, or NaN with the quiet bit set.
        return sign | 0x7c00u | select(0u, 0x200u, man != 0u) | (man >> 13u);
    }
    // The f16 biased exponent, as a signed value: exp − 127 + 15.
    let half_exp = i32(exp) - 112;
    if (half_exp >= 31) {
        return sign | 0x7c00u;
    }
    if (half_exp <= 0) {
        if (14 - half_exp > 24) {
            return sign;
        }
        let m = man | 0x800000u;
        let shift = u32(14 - half_exp);
        var h = m >> shift;
        let round_bit = 1u << (shift - 1u);
        if ((m & round_bit) != 0u && (m & (3u * round_bit - 1u)) != 0u) {
            h = h + 1u;
        }
        return sign | h;
    }
    let h = sign | (u32(half_exp) << 10u) | (man >> 13u);
    let round_bit = 0x1000u;
    if ((man & round_bit) != 0u && (man & (3u * round_bit - 1u)) != 0u) {
        return h + 1u;
    }
    return h;
}

fn word_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// The half-type bits (bf16 when `is_bf16`, else f16) of the f32 with bits `v`.
fn half_bits(v: u32, is_bf16: bool) -> u32 {
    if (is_bf16) {
        return bf16_bits(v);
    }
    return f16_bits(v);
}

// Word `k` of the packed output: elements 2k (low half) and 2k + 1 (high half, 0 past the end).
fn pack_word(k: u32, is_bf16: bool) {
    let i = 2u * k;
    if (i >= params.n) {
        return;
    }
    var high = 0u;
    if (i + 1u < params.n) {
        high = half_bits(src[i + 1u], is_bf16);
    }
    dst[k] = half_bits(src[i], is_bf16) | (high << 16u);
}

@compute @workgroup_size(WG)
fn pack_bf16(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    pack_word(word_index(wid, nwg, lid), true);
}

@compute @workgroup_size(WG)
fn pack_f16(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    pack_word(word_index(wid, nwg, lid), false);
}
