//! TorchScript exports (`model.pt` beside `tokenizer.json`), traced from Python when the test
//! runs: one returning token embeddings (pooled and normalised by the directory's
//! sentence-transformers files, as for safetensors), one returning sentence embeddings
//! itself. Both must equal sentence-transformers' vectors for all-MiniLM-L6-v2.
//! Needs `. scripts/torch-env`.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod common;

use std::process::Command;

use common::{cosine, minilm_dir, python, reference};
use flowbot_gpu::{BatchOptions, Batcher, Encoder, Options, ScriptClassifier};

/// Traces all-MiniLM-L6-v2's transformer (`tokens`: `[batch, len, 384]` token embeddings)
/// or the transformer with mean pooling and normalisation (`sentences`: `[batch, 384]`)
/// into `out/model.pt`, with the files the encoder reads beside it.
const EXPORT: &str = r#"
import os, shutil, sys
import torch
from transformers import AutoModel

src, out, kind = sys.argv[1], sys.argv[2], sys.argv[3]
bert = AutoModel.from_pretrained(src, attn_implementation="eager").eval()

class Tokens(torch.nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert
    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]

class Sentences(Tokens):
    def forward(self, input_ids, attention_mask):
        t = self.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        m = attention_mask.unsqueeze(-1).to(t.dtype)
        v = (t * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(v, p=2.0, dim=1)

module = Tokens(bert) if kind == "tokens" else Sentences(bert)
# Trace with padding in the batch, so the traced graph applies the mask.
ids = torch.tensor([[101, 7592, 2088, 999, 2129, 2024, 2017, 102], [101, 7592, 102, 0, 0, 0, 0, 0]])
mask = (ids != 0).long()
with torch.no_grad():
    traced = torch.jit.trace(module, (ids, mask))
os.makedirs(out, exist_ok=True)
traced.save(os.path.join(out, "model.pt"))
shutil.copy(os.path.join(src, "tokenizer.json"), out)
shutil.copy(os.path.join(src, "sentence_bert_config.json"), out)
if kind == "tokens":
    shutil.copy(os.path.join(src, "modules.json"), out)
    shutil.copytree(os.path.join(src, "1_Pooling"), os.path.join(out, "1_Pooling"), dirs_exist_ok=True)
"#;

fn export(kind: &str) -> std::path::PathBuf {
    let out = std::env::temp_dir().join(format!(
        "flowbot-gpu-torchscript-{kind}-{}",
        std::process::id()
    ));
    let status = Command::new(python())
        .arg("-c")
        .arg(EXPORT)
        .arg(minilm_dir())
        .arg(&out)
        .arg(kind)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .status()
        .unwrap();
    assert!(status.success(), "the export failed");
    out
}

fn texts() -> Vec<String> {
    [
        "How do I reset my password?",
        "Where is my order #12345?",
        "Café déjà vu",
        "",
        "a much longer sentence about a delivery that did not arrive on the day it was promised",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torchscript_encoders_equal_sentence_transformers() {
    let texts = texts();
    let expected = reference(&minilm_dir(), &texts, "cpu");
    for kind in ["tokens", "sentences"] {
        let dir = export(kind);
        let encoder = Encoder::load(&dir, &Options::cpu()).unwrap();
        assert_eq!(encoder.dimension(), 384, "{kind}");
        assert_eq!(encoder.max_length(), 256, "{kind}");
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let batched = encoder.embed(&refs).unwrap();
        for (i, text) in texts.iter().enumerate() {
            let c = cosine(&batched[i], &expected[i]);
            assert!(c >= 0.9999, "{kind}: cosine {c} for {text:?}");
        }
        // Batched the same way as the safetensors models.
        let batcher = Batcher::start(encoder, BatchOptions::default()).unwrap();
        let v = batcher.embed_many(&texts).await.unwrap();
        for (i, text) in texts.iter().enumerate() {
            let c = cosine(&v[i], &expected[i]);
            assert!(c >= 0.9999, "{kind}, batcher: cosine {c} for {text:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_torchscript_file_that_is_not_one_is_refused_naming_it() {
    let dir = std::env::temp_dir().join(format!("flowbot-gpu-bad-script-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.pt"), b"not a zip archive").unwrap();
    std::fs::copy(
        minilm_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let err = Encoder::load(&dir, &Options::cpu()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&dir.join("model.pt").display().to_string()),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A classifier: all-MiniLM-L6-v2, mean pooling and a seeded linear layer to three labels,
/// traced to `out/model.pt` with `config.json` naming the labels; prints the probabilities
/// the untraced module gives the texts on stdin.
const CLASSIFIER: &str = r#"
import json, os, shutil, sys
import torch
from transformers import AutoModel, AutoTokenizer

src, out = sys.argv[1], sys.argv[2]
torch.manual_seed(7)
bert = AutoModel.from_pretrained(src, attn_implementation="eager").eval()

class Head(torch.nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert
        self.head = torch.nn.Linear(384, 3)
    def forward(self, input_ids, attention_mask):
        t = self.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        m = attention_mask.unsqueeze(-1).to(t.dtype)
        return self.head((t * m).sum(1) / m.sum(1).clamp(min=1e-9)) * 20.0

module = Head(bert).eval()
ids = torch.tensor([[101, 7592, 2088, 999, 2129, 2024, 2017, 102], [101, 7592, 102, 0, 0, 0, 0, 0]])
with torch.no_grad():
    traced = torch.jit.trace(module, (ids, (ids != 0).long()))
os.makedirs(out, exist_ok=True)
traced.save(os.path.join(out, "model.pt"))
shutil.copy(os.path.join(src, "tokenizer.json"), out)
shutil.copy(os.path.join(src, "sentence_bert_config.json"), out)
json.dump({"id2label": {"0": "billing", "1": "shipping", "2": "other"}}, open(os.path.join(out, "config.json"), "w"))
tok = AutoTokenizer.from_pretrained(src)
texts = json.load(sys.stdin)
probs = []
with torch.no_grad():
    for t in texts:
        enc = tok([t], return_tensors="pt", truncation=True, max_length=256)
        probs.append(torch.softmax(module(enc["input_ids"], enc["attention_mask"]), -1)[0].tolist())
json.dump(probs, sys.stdout)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torchscript_classifier_gives_the_labels_python_gives() {
    use std::io::Write as _;
    let out = std::env::temp_dir().join(format!(
        "flowbot-gpu-script-classifier-{}",
        std::process::id()
    ));
    let texts = texts();
    let mut child = Command::new(python())
        .arg("-c")
        .arg(CLASSIFIER)
        .arg(minilm_dir())
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&texts).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the export failed");
    let expected: Vec<Vec<f32>> = serde_json::from_slice(&output.stdout).unwrap();

    let c = ScriptClassifier::load(&out, &Options::cpu(), BatchOptions::default()).unwrap();
    assert_eq!(c.labels(), ["billing", "shipping", "other"]);
    for (text, want) in texts.iter().zip(&expected) {
        let got = flowbot_core::Classifier::classify(&c, text).await.unwrap();
        assert_eq!(got.len(), 3);
        for (i, name) in ["billing", "shipping", "other"].iter().enumerate() {
            let p = got.iter().find(|l| l.label == *name).unwrap().confidence;
            assert!(
                (p - want[i]).abs() < 1e-4,
                "{text:?}: {name} {p} against {}",
                want[i]
            );
        }
    }
    // Labels that do not match the logits are refused, naming both counts.
    std::fs::write(out.join("labels.json"), r#"["a", "b"]"#).unwrap();
    let err = ScriptClassifier::load(&out, &Options::cpu(), BatchOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("3 logits per text but 2 labels"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}
