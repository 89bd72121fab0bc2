//! Shared by the tests: the model's directory and sentence-transformers' reference vectors.

#![allow(dead_code, unreachable_pub)] // each test binary uses a part

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// all-MiniLM-L6-v2's files (FLOWBOT_MINILM_DIR, exported by scripts/torch-env).
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("FLOWBOT_MINILM_DIR")
        .expect("FLOWBOT_MINILM_DIR is unset: run `. scripts/torch-env` first (scripts/test does)");
    PathBuf::from(dir)
}

/// The venv's Python (the one scripts/torch-env installed torch and sentence-transformers
/// into).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOWBOT_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("VIRTUAL_ENV")
        .expect("VIRTUAL_ENV is unset: run `. scripts/torch-env` first (scripts/test does)");
    PathBuf::from(venv).join("bin/python")
}

const REFERENCE: &str = r#"
import json, sys
from sentence_transformers import SentenceTransformer
model_dir, device = sys.argv[1], sys.argv[2]
texts = json.load(sys.stdin)
model = SentenceTransformer(model_dir, device=device)
vectors = model.encode(texts, batch_size=32, convert_to_numpy=True)
json.dump([v.tolist() for v in vectors], sys.stdout)
"#;

/// sentence-transformers' vectors for `texts`, computed now on `device` (fp32).
pub fn reference(dir: &std::path::Path, texts: &[String], device: &str) -> Vec<Vec<f32>> {
    let mut child = Command::new(python())
        .arg("-c")
        .arg(REFERENCE)
        .arg(dir)
        .arg(device)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python of the venv");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(texts).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sentence-transformers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Vec<f32>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.len(), texts.len());
    v
}

/// The cosine of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dimensions differ");
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb)) as f32
}
