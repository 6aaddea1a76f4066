//! Hostile or broken safetensors bytes, shared by the checkpoint and pretrained loaders.

/// A safetensors file from a raw header and data section.
pub(crate) fn raw_st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

/// Hostile or broken safetensors bytes, each with the words its error must contain (all
/// loaders wrap them as InvalidArgument naming the file).
pub(crate) fn hostile_safetensors(valid: &[u8]) -> Vec<(String, Vec<u8>)> {
    let w = r#""w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#;
    let mut v: Vec<(String, Vec<u8>)> = vec![
        ("empty file".into(), vec![]),
        ("7 bytes".into(), vec![1; 7]),
        (
            "header length u64::MAX".into(),
            u64::MAX.to_le_bytes().to_vec(),
        ),
        ("header length past the end".into(), {
            let mut b = 1000u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        (
            "header length 2^40".into(),
            (1u64 << 40).to_le_bytes().to_vec(),
        ),
        ("header not JSON".into(), raw_st("{{{{", &[])),
        ("header JSON array".into(), raw_st("[1,2]", &[])),
        ("header not UTF-8".into(), {
            let mut b = 4u64.to_le_bytes().to_vec();
            b.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
            b
        }),
        (
            "data_offsets past the end".into(),
            raw_st(&format!("{{{w}}}"), &[0; 4]),
        ),
        (
            "data_offsets reversed".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                &[0; 8],
            ),
        ),
        (
            "overlapping offsets".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            ),
        ),
        (
            "offsets leave a gap".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                &[0; 8],
            ),
        ),
        (
            "shape disagrees with the byte count".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
        ),
        (
            "shape product overflows".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
        ),
        (
            "unknown dtype".into(),
            raw_st(
                r#"{"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
        ),
        (
            "negative offsets".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}"#,
                &[0; 8],
            ),
        ),
        (
            "metadata not strings".into(),
            raw_st(&format!(r#"{{"__metadata__":{{"step":5}},{w}}}"#), &[0; 8]),
        ),
        (
            "duplicate tensor name".into(),
            raw_st(&format!("{{{w},{w}}}"), &[0; 8]),
        ),
    ];
    // Every strict prefix of a valid file, at a few cut points (header and data).
    for cut in [8, 9, 20, valid.len() / 2, valid.len() - 4, valid.len() - 1] {
        v.push((format!("truncated to {cut} bytes"), valid[..cut].to_vec()));
    }
    v
}
