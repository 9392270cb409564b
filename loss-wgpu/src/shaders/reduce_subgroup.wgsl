// `fused.wgsl`'s workgroup merges with subgroup operations (the host appends this fragment
// when the adapter has subgroups).

// The workgroup's scratch for the merges.
var<workgroup> wg_a: array<f32, WG>;
var<workgroup> wg_b: array<f32, WG>;
var<workgroup> wg_c: array<u32, WG>;

// The workgroup's merged state; every invocation gets it. Uniform control flow only.
// Subgroup butterflies first (`subgroupShuffleXor`, a fixed pattern for the device's fixed
// subgroup size), then the subgroups' results in subgroup order.
fn reduce_stats(own: Stats, lid: u32, sg_size: u32) -> Stats {
    var st = own;
    for (var off = sg_size / 2u; off > 0u; off = off / 2u) {
        let other = Stats(
            subgroupShuffleXor(st.m, off),
            subgroupShuffleXor(st.s, off),
            subgroupShuffleXor(st.bad, off),
        );
        st = merge(st, other);
    }
    let groups = WG / sg_size;
    if (lid % sg_size == 0u) {
        wg_a[lid / sg_size] = st.m;
        wg_b[lid / sg_size] = st.s;
        wg_c[lid / sg_size] = st.bad;
    }
    workgroupBarrier();
    st = Stats(wg_a[0], wg_b[0], wg_c[0]);
    for (var k = 1u; k < groups; k = k + 1u) {
        st = merge(st, Stats(wg_a[k], wg_b[k], wg_c[k]));
    }
    workgroupBarrier();
    return st;
}

// The workgroup's sums of two values (fixed order); every invocation gets them.
fn reduce_sums(own: vec2<f32>, lid: u32, sg_size: u32) -> vec2<f32> {
    var v = own;
    for (var off = sg_size / 2u; off > 0u; off = off / 2u) {
        v = v + vec2<f32>(subgroupShuffleXor(v.x, off), subgroupShuffleXor(v.y, off));
    }
    let groups = WG / sg_size;
    if (lid % sg_size == 0u) {
        wg_a[lid / sg_size] = v.x;
        wg_b[lid / sg_size] = v.y;
    }
    workgroupBarrier();
    v = vec2<f32>(wg_a[0], wg_b[0]);
    for (var k = 1u; k < groups; k = k + 1u) {
        v = v + vec2<f32>(wg_a[k], wg_b[k]);
    }
    workgroupBarrier();
    return v;
}
