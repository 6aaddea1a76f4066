// Tile exchange through subgroups, appended to attention.wgsl (see there). Needs the SUBGROUP
// feature ("enable subgroups" in WGSL terms; naga 30 takes no directive) and subgroups of at
// least TW = 8 lanes. The lanes of a subgroup own consecutive rows; for each tile, lane i loads
// row i of the tile (lanes past TW load a duplicate) and every lane reads the tile's rows out of
// the loading lanes with subgroupBroadcast. On a CPU adapter (lavapipe) a broadcast is a register
// extract while a storage load is a bounds-checked loop over lanes, so each K/V element is loaded
// once per subgroup instead of once per lane; on a GPU it stands in for a shared-memory tile.
//
// The entry points below are the looped kernels GPUs run (their compilers unroll the loops over
// D and keep the rows in registers). For CPU adapters the launcher appends straight-line kernels
// generated for the head size at hand (src/kernels/attention.rs, `mod cpu`).

var<private> lane_id: u32;
var<private> ta: array<vec4<f32>, MAXC>; // this lane's row of the tile: K (forward, dQ) or Q (dK/dV)
var<private> tb: array<vec4<f32>, MAXC>; // V (forward, dQ) or dO (dK/dV)
var<private> ts: vec2<f32>;              // (lse * log2 e, delta) of this lane's query row

fn kv_tile(base: u32, j0: u32, last: u32) {
    let at = (base + min(j0 + lane_id % TW, last)) * D4;
    for (var c = 0u; c < D4; c++) {
        ta[c] = k4[at + c];
        tb[c] = v4[at + c];
    }
}

fn qdo_tile(base: u32, i0: u32, last: u32) {
    let i = base + min(i0 + lane_id % TW, last);
    for (var c = 0u; c < D4; c++) {
        ta[c] = q4[i * D4 + c];
        tb[c] = do4[i * D4 + c];
    }
    ts = vec2<f32>(lse_in[i] * LOG2E, delta_in[i]);
}

// Lane i's value for i in 0..TW (the broadcast lane must be a constant).
fn bc8(x: vec4<f32>) -> array<vec4<f32>, TW> {
    return array<vec4<f32>, TW>(
        subgroupBroadcast(x, 0u), subgroupBroadcast(x, 1u), subgroupBroadcast(x, 2u), subgroupBroadcast(x, 3u),
        subgroupBroadcast(x, 4u), subgroupBroadcast(x, 5u), subgroupBroadcast(x, 6u), subgroupBroadcast(x, 7u));
}

fn tile_k(c: u32) -> array<vec4<f32>, TW> { return bc8(ta[c]); }
fn tile_q(c: u32) -> array<vec4<f32>, TW> { return bc8(ta[c]); }
fn tile_v(c: u32) -> array<vec4<f32>, TW> { return bc8(tb[c]); }
fn tile_do(c: u32) -> array<vec4<f32>, TW> { return bc8(tb[c]); }

fn tile_s() -> array<vec2<f32>, TW> {
    return array<vec2<f32>, TW>(
        subgroupBroadcast(ts, 0u), subgroupBroadcast(ts, 1u), subgroupBroadcast(ts, 2u), subgroupBroadcast(ts, 3u),
        subgroupBroadcast(ts, 4u), subgroupBroadcast(ts, 5u), subgroupBroadcast(ts, 6u), subgroupBroadcast(ts, 7u));
}

// A group is a subgroup: rows sid * sg .. of the workgroup's WG rows, one per lane.

@compute @workgroup_size(WG)
fn attn_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_id) sid: u32, @builtin(subgroup_size) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    lane_id = lane;
    fwd_group(wid.y * nwg.x + wid.x, sid * sg, sg, lane);
}

@compute @workgroup_size(WG)
fn attn_bwd_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_id) sid: u32, @builtin(subgroup_size) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    lane_id = lane;
    dq_group(wid.y * nwg.x + wid.x, sid * sg, sg, lane);
}

@compute @workgroup_size(WG)
fn attn_bwd_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_id) sid: u32, @builtin(subgroup_size) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    lane_id = lane;
    dkv_group(wid.y * nwg.x + wid.x, sid * sg, sg, lane);
}
