//! all-MiniLM-L6-v2 on a CUDA device against sentence-transformers: fp32 and fp16 vectors
//! against sentence-transformers' fp32 reference (cosine at least 0.9999 and 0.999), a
//! batch through the batcher, and the device settings. Runs where libtorch sees a CUDA
//! device; elsewhere each test says it was skipped and passes (CI has no GPU: docs/gpu.md).
//! Needs `. scripts/torch-env`.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
#![allow(clippy::print_stderr)] // a skipped test says so

mod common;

use common::{cosine, minilm_dir, reference};
use flowbot_gpu::{BatchOptions, Batcher, DeviceChoice, Encoder, Options, Precision};

fn cuda() -> bool {
    let there = flowbot_gpu::cuda_available();
    if !there {
        eprintln!("SKIPPED: libtorch sees no CUDA device");
    }
    there
}

fn texts() -> Vec<String> {
    let mut t: Vec<String> = [
        "How do I reset my password?",
        "Where is my order #12345? It was due on 2026-11-30.",
        "Café déjà vu — naïve façade",
        "東京で一番おいしいラーメン屋はどこですか？",
        "",
        "I ❤️ this bot 🤖",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    t.push("word ".repeat(300));
    t
}

#[test]
fn fp32_and_fp16_on_cuda_equal_sentence_transformers() {
    if !cuda() {
        return;
    }
    let dir = minilm_dir();
    let texts = texts();
    let on_cpu = reference(&dir, &texts, "cpu");
    let on_gpu = reference(&dir, &texts, "cuda");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for (precision, bound) in [
        (Precision::F32, 0.9999f32),
        (Precision::F16, 0.999),
        (Precision::Bf16, 0.99),
    ] {
        let encoder = Encoder::load(
            &dir,
            &Options::default()
                .device(DeviceChoice::Cuda(0))
                .precision(precision),
        )
        .unwrap();
        assert_eq!(encoder.device(), "cuda:0");
        let v = encoder.embed(&refs).unwrap();
        for (i, text) in texts.iter().enumerate() {
            for (against, r) in [("cpu", &on_cpu[i]), ("cuda", &on_gpu[i])] {
                let c = cosine(&v[i], r);
                assert!(
                    c >= bound,
                    "{precision:?} against sentence-transformers on {against}: cosine {c} for {text:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batcher_runs_on_cuda() {
    if !cuda() {
        return;
    }
    let dir = minilm_dir();
    let texts = texts();
    let expected = reference(&dir, &texts, "cpu");
    let encoder = Encoder::load(
        &dir,
        &Options::default()
            .device(DeviceChoice::Auto)
            .precision(Precision::F16),
    )
    .unwrap();
    assert_eq!(encoder.device(), "cuda:0", "auto picks the GPU");
    let batcher = Batcher::start(encoder, BatchOptions::default().max_batch(128)).unwrap();
    let v = batcher.embed_many(&texts).await.unwrap();
    for (i, text) in texts.iter().enumerate() {
        let c = cosine(&v[i], &expected[i]);
        assert!(c >= 0.999, "cosine {c} for {text:?}");
    }
}

#[test]
fn a_cuda_device_that_is_not_there_is_refused_naming_those_present() {
    let n = flowbot_gpu::cuda_device_count();
    let err = Encoder::load(
        minilm_dir(),
        &Options::default().device(DeviceChoice::Cuda(n)),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!(
            "cuda:{n} asked for, but {n} CUDA device(s) are present"
        )),
        "{err}"
    );
}
