//! Attention, head split/merge and the KV cache.

use portagrad::testing::shared_device;
use portagrad::{
    KvCache, Tensor, attend_cached, attention, attention_qkv, merge_heads, split_heads,
};

use crate::{Corpus, err, ids, limit, ok};

#[test]
fn attention_and_head_shapes() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("attention");
    let z = |s: &[usize]| Tensor::zeros(d, s).unwrap();
    c.case("attention rank 3", || {
        err(
            attention(&z(&[1, 2, 4]), &z(&[1, 2, 4]), &z(&[1, 2, 4]), true),
            "Shape",
            &["(B, H, T, D)"],
        )
    });
    c.case("attention shapes differ", || {
        err(
            attention(
                &z(&[1, 1, 2, 4]),
                &z(&[1, 1, 3, 4]),
                &z(&[1, 1, 2, 4]),
                true,
            ),
            "Shape",
            &["k [1, 1, 3, 4]", "(B, Hkv, T, D)"],
        )
    });
    for dim in [0usize, 3, 6, 1024] {
        c.case(&format!("attention head size {dim}"), || {
            let s = [1, 1, 2, dim];
            err(
                attention(&z(&s), &z(&s), &z(&s), false),
                "Shape",
                &["head size"],
            )
        });
    }
    c.case("attention u32 input", || {
        let q = ids(d, &[0; 8], &[1, 1, 2, 4]);
        err(attention(&q, &q, &q, false), "DType", &["u32"])
    });
    c.case("split_heads width not a multiple of 3", || {
        err(split_heads(&z(&[1, 2, 8]), 1), "Shape", &["split_heads"])
    });
    c.case("split_heads zero heads", || {
        err(split_heads(&z(&[1, 2, 24]), 0), "Shape", &["split_heads"])
    });
    c.case("split_heads heads not dividing C", || {
        err(split_heads(&z(&[1, 2, 24]), 3), "Shape", &["split_heads"])
    });
    c.case("attention_qkv rank 2", || {
        err(
            attention_qkv(&z(&[2, 24]), 2, true),
            "Shape",
            &["(B, T, 3*C)"],
        )
    });
    c.case("merge_heads rank 3", || {
        err(merge_heads(&z(&[1, 2, 4])), "Shape", &["merge_heads"])
    });
    c.finish();
}

#[test]
fn kv_cache_sizes_and_appends() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("attention/kv cache");
    let z = |s: &[usize]| Tensor::zeros(d, s).unwrap();
    c.case("KvCache zero max_len", || {
        err(KvCache::new(d, 1, 1, 0, 4), "Shape", &["zero dimension"])
    });
    c.case("KvCache head size 5", || {
        err(KvCache::new(d, 1, 1, 4, 5), "Shape", &["head size"])
    });
    c.case("KvCache past the adapter limit", || {
        let n = (limit(d) / 4 / 64 + 1) as usize;
        err(KvCache::new(d, 1, 1, n, 64), "TooLarge", &["bytes"])
    });
    c.case("KvCache append past max_len", || {
        let mut cache = ok(KvCache::new(d, 1, 1, 2, 4))?;
        err(
            cache.append(&z(&[1, 1, 3, 4]), &z(&[1, 1, 3, 4])),
            "InvalidArgument",
            &["append", "at most 2"],
        )
    });
    c.case("KvCache append wrong heads", || {
        let mut cache = ok(KvCache::new(d, 1, 1, 4, 4))?;
        err(
            cache.append(&z(&[1, 2, 1, 4]), &z(&[1, 2, 1, 4])),
            "Shape",
            &["append"],
        )
    });
    c.case("KvCache truncate past len", || {
        let mut cache = ok(KvCache::new(d, 1, 1, 4, 4))?;
        err(cache.truncate(1), "InvalidArgument", &["truncate"])
    });
    c.case("attend_cached on an empty cache", || {
        let cache = ok(KvCache::new(d, 1, 1, 4, 4))?;
        err(
            attend_cached(&z(&[1, 1, 1, 4]), &cache),
            "Shape",
            &["the cache holds 0"],
        )
    });
    c.case("attend_cached query of the wrong head size", || {
        let mut cache = ok(KvCache::new(d, 1, 1, 4, 4))?;
        ok(cache.append(&z(&[1, 1, 1, 4]), &z(&[1, 1, 1, 4])))?;
        err(
            attend_cached(&z(&[1, 1, 1, 8]), &cache),
            "Shape",
            &["[1, 1, 1, 8]"],
        )
    });
    c.finish();
}
