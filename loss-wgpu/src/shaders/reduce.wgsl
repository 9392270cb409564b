// Deterministic sum: each workgroup adds a fixed block of `WG * PER_THREAD` values (strided
// per invocation, then a fixed tree) into one partial; the host repeats the pass over the
// partials until one value is left. No float atomics, so the order, and the bits, never change.

// `WG` and `PER_THREAD` are prepended by the host from its constants (`context.rs`, `prelude`).

struct Params {
    n: u32,
    src_offset: u32,
    dst_offset: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn reduce_sum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * nwg.x + wid.x;
    let start = group * (WG * PER_THREAD);
    // The spare tail of a 2-D grid leaves as a whole workgroup (uniform control flow).
    if (start >= params.n) {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = start + k * WG + lid;
        if (i < params.n) {
            acc = acc + src[params.src_offset + i];
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        dst[params.dst_offset + group] = partial[0];
    }
}
