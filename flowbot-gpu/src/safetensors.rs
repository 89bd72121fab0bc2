//! Reading `model.safetensors` one tensor at a time: the header (8 bytes of length, then
//! JSON naming each tensor's dtype, shape and byte range), then each tensor's bytes read
//! into a buffer and copied into libtorch. At most the largest tensor is held twice while
//! loading, where reading the whole file first would hold every weight twice.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// The header is JSON of at most this size (safetensors' own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Every tensor of the file, by name.
pub(crate) fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bad = |reason: String| Error::load(path, reason);
    let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| bad("not a safetensors file (shorter than its header)".into()))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || header_len.saturating_add(8) > file_len {
        return Err(bad(format!(
            "not a safetensors file (a header of {header_len} bytes in a file of {file_len})"
        )));
    }
    let mut header = vec![0u8; usize::try_from(header_len).map_err(|e| bad(e.to_string()))?];
    file.read_exact(&mut header)
        .map_err(|e| bad(e.to_string()))?;
    let entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let data_start = 8 + header_len;
    let mut out = HashMap::with_capacity(entries.len());
    let mut buf = Vec::new();
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let e: Entry =
            serde_json::from_value(value).map_err(|err| bad(format!("tensor '{name}': {err}")))?;
        let (kind, size) = match e.dtype.as_str() {
            "F32" => (Kind::Float, 4),
            "F16" => (Kind::Half, 2),
            "BF16" => (Kind::BFloat16, 2),
            "F64" => (Kind::Double, 8),
            "I64" => (Kind::Int64, 8),
            other => {
                return Err(bad(format!(
                    "tensor '{name}': dtype {other} is not supported"
                )));
            }
        };
        let count = e
            .shape
            .iter()
            .try_fold(1u64, |n, d| n.checked_mul(u64::try_from(*d).ok()?))
            .and_then(|n| n.checked_mul(size));
        let (start, end) = e.data_offsets;
        let fits = data_start
            .checked_add(end)
            .is_some_and(|last| last <= file_len);
        if count != end.checked_sub(start) || !fits {
            return Err(bad(format!(
                "tensor '{name}': its bytes {start}..{end} do not hold shape {:?} of {} or lie past the end",
                e.shape, e.dtype
            )));
        }
        let n = usize::try_from(end - start).map_err(|err| bad(err.to_string()))?;
        buf.resize(n, 0);
        file.seek(SeekFrom::Start(data_start + start))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|err| bad(format!("tensor '{name}': {err}")))?;
        let shape: Vec<i64> = e
            .shape
            .iter()
            .map(|d| i64::try_from(*d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|err| bad(err.to_string()))?;
        let t = Tensor::f_from_data_size(&buf, &shape, kind)?;
        out.insert(name, t);
    }
    Ok(out)
}
