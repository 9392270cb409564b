// Narrow contiguous rows (`inner = 1`, at most the serial limit of classes): a tile of whole rows
// per workgroup. The workgroup loads the tile's `rows · C` logits with
// neighbouring invocations at neighbouring addresses, each invocation then computes one row from
// the tile exactly as `row_serial` does (the same functions, through these accessors), writing
// the row's gradient over its logits in the tile (each value is read before it is written), and
// the workgroup stores the tile back coalesced. Where `row_serial` has neighbouring invocations
// read `4·C` bytes apart, every global access here is contiguous across the workgroup.
// The tile holds the logits as the loss sees them (`load_logit`: widened, soft-capped).
// `NARROW_TILE` is prepended by the host, which sizes the grid with the same rule.

var<workgroup> tile: array<f32, NARROW_TILE>;
// The global index of the tile's first logit.
var<private> tile_start: u32;

fn logit(i: u32) -> f32 {
    return tile[i - tile_start];
}

fn put_grad(i: u32, g: f32) {
    tile[i - tile_start] = g;
}

// Rows per tile: as many whole rows as the tile holds, at most one per invocation.
fn tile_rows() -> u32 {
    return min(WG, NARROW_TILE / params.classes);
}

@compute @workgroup_size(WG)
fn narrow_main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let per_tile = tile_rows();
    let first = (wid.y * nwg.x + wid.x) * per_tile;
    if (first >= params.positions) {
        return;
    }
    let rows = min(per_tile, params.positions - first);
    let n = rows * params.classes;
    tile_start = first * params.classes;
    for (var i = lid; i < n; i = i + WG) {
        tile[i] = load_logit(tile_start + i);
    }
    workgroupBarrier();
    if (lid < rows) {
        one_position(first + lid);
    }
    workgroupBarrier();
    if (has_flag(FLAG_GRAD)) {
        for (var i = lid; i < n; i = i + WG) {
            grad[tile_start + i] = tile[i];
        }
    }
}
