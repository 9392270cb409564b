// `fused.wgsl`'s workgroup merges without subgroup operations (the host appends this fragment
// when the adapter has no subgroups, or they are switched off).

// The workgroup's scratch for the merges.
var<workgroup> wg_a: array<f32, WG>;
var<workgroup> wg_b: array<f32, WG>;
var<workgroup> wg_c: array<u32, WG>;

// The workgroup's merged state; every invocation gets it. Uniform control flow only.
// A shared-memory tree of fixed shape (the adapter has no subgroups, or they are off).
fn reduce_stats(own: Stats, lid: u32, _sg: u32) -> Stats {
    wg_a[lid] = own.m;
    wg_b[lid] = own.s;
    wg_c[lid] = own.bad;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let r = merge(
                Stats(wg_a[lid], wg_b[lid], wg_c[lid]),
                Stats(wg_a[lid + stride], wg_b[lid + stride], wg_c[lid + stride]),
            );
            wg_a[lid] = r.m;
            wg_b[lid] = r.s;
            wg_c[lid] = r.bad;
        }
        workgroupBarrier();
    }
    let r = Stats(wg_a[0], wg_b[0], wg_c[0]);
    workgroupBarrier();
    return r;
}

// The workgroup's sums of two values (fixed order); every invocation gets them.
fn reduce_sums(own: vec2<f32>, lid: u32, _sg: u32) -> vec2<f32> {
    wg_a[lid] = own.x;
    wg_b[lid] = own.y;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            wg_a[lid] = wg_a[lid] + wg_a[lid + stride];
            wg_b[lid] = wg_b[lid] + wg_b[lid + stride];
        }
        workgroupBarrier();
    }
    let r = vec2<f32>(wg_a[0], wg_b[0]);
    workgroupBarrier();
    return r;
}
