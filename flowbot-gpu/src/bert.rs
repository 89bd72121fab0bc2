//! A BERT-family encoder written on tch: Hugging Face `config.json` and `model.safetensors`
//! in, token embeddings (the last hidden state) out. Every operation is the fallible one
//! (`f_…`), so a failure in libtorch (out of memory on a GPU) comes back as an error.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// The keys of a BERT `config.json` the encoder reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BertConfig {
    #[serde(default)]
    pub(crate) model_type: Option<String>,
    pub(crate) hidden_size: i64,
    pub(crate) num_hidden_layers: usize,
    pub(crate) num_attention_heads: i64,
    pub(crate) intermediate_size: i64,
    #[serde(default = "gelu")]
    pub(crate) hidden_act: String,
    #[serde(default = "eps")]
    pub(crate) layer_norm_eps: f64,
    pub(crate) max_position_embeddings: usize,
    #[serde(default)]
    pub(crate) position_embedding_type: Option<String>,
}

fn gelu() -> String {
    "gelu".into()
}

fn eps() -> f64 {
    1e-12
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    Gelu,
    GeluTanh,
    Relu,
}

struct Layer {
    qkv_w: Tensor,
    qkv_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    ln1_w: Tensor,
    ln1_b: Tensor,
    up_w: Tensor,
    up_b: Tensor,
    down_w: Tensor,
    down_b: Tensor,
    ln2_w: Tensor,
    ln2_b: Tensor,
}

/// The weights of a BERT encoder on one device, in one precision.
pub(crate) struct Bert {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    layers: Vec<Layer>,
    hidden: i64,
    heads: i64,
    eps: f64,
    act: Activation,
    pub(crate) max_positions: usize,
}

/// The tensors of a safetensors file, by name without a leading `bert.` (checkpoints of
/// `BertForMaskedLM` and the like keep the encoder under that prefix).
struct Weights {
    file: std::path::PathBuf,
    tensors: HashMap<String, Tensor>,
    device: Device,
    kind: Kind,
}

impl Weights {
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| Error::load(&self.file, format!("tensor '{name}' is missing")))?;
        if t.size() != shape {
            return Err(Error::load(
                &self.file,
                format!(
                    "tensor '{name}' has shape {:?}, config.json implies {shape:?}",
                    t.size()
                ),
            ));
        }
        Ok(t.f_to_device(self.device)?.f_to_kind(self.kind)?)
    }
}

impl Bert {
    /// Read `config.json` and `model.safetensors` from `dir` onto `device`, in `kind`.
    pub(crate) fn load(dir: &Path, device: Device, kind: Kind) -> Result<Bert> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| Error::load(&config_path, e))?;
        let c: BertConfig =
            serde_json::from_str(&text).map_err(|e| Error::load(&config_path, e))?;
        check_config(&c).map_err(|reason| Error::load(&config_path, reason))?;
        let act = match c.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(Error::load(
                    &config_path,
                    format!(
                        "hidden_act '{other}' is not one of gelu, gelu_new, gelu_pytorch_tanh, relu"
                    ),
                ));
            }
        };
        let file = dir.join("model.safetensors");
        if !file.is_file() {
            return Err(Error::load(
                &file,
                "not found (the weights must be in safetensors form)",
            ));
        }
        let tensors = crate::safetensors::read(&file)?
            .into_iter()
            .map(|(name, t)| match name.strip_prefix("bert.") {
                Some(rest) => (rest.to_owned(), t),
                None => (name, t),
            })
            .collect();
        let mut w = Weights {
            file,
            tensors,
            device,
            kind,
        };
        let h = c.hidden_size;
        let i = c.intermediate_size;
        let vocab = w
            .tensors
            .get("embeddings.word_embeddings.weight")
            .map(|t| t.size().first().copied().unwrap_or(0))
            .unwrap_or(0);
        let types = w
            .tensors
            .get("embeddings.token_type_embeddings.weight")
            .map(|t| t.size().first().copied().unwrap_or(0))
            .unwrap_or(0);
        let positions = i64::try_from(c.max_position_embeddings)
            .map_err(|_| Error::load(&config_path, "max_position_embeddings is too large"))?;
        let _guard = tch::no_grad_guard();
        let word = w.take("embeddings.word_embeddings.weight", &[vocab, h])?;
        let position = w.take("embeddings.position_embeddings.weight", &[positions, h])?;
        let token_type = w.take("embeddings.token_type_embeddings.weight", &[types, h])?;
        let ln_w = w.take("embeddings.LayerNorm.weight", &[h])?;
        let ln_b = w.take("embeddings.LayerNorm.bias", &[h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for n in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{n}");
            let q_w = w.take(&format!("{p}.attention.self.query.weight"), &[h, h])?;
            let k_w = w.take(&format!("{p}.attention.self.key.weight"), &[h, h])?;
            let v_w = w.take(&format!("{p}.attention.self.value.weight"), &[h, h])?;
            let q_b = w.take(&format!("{p}.attention.self.query.bias"), &[h])?;
            let k_b = w.take(&format!("{p}.attention.self.key.bias"), &[h])?;
            let v_b = w.take(&format!("{p}.attention.self.value.bias"), &[h])?;
            layers.push(Layer {
                // One projection for query, key and value: one matrix product instead of three.
                qkv_w: Tensor::f_cat(&[q_w, k_w, v_w], 0)?,
                qkv_b: Tensor::f_cat(&[q_b, k_b, v_b], 0)?,
                out_w: w.take(&format!("{p}.attention.output.dense.weight"), &[h, h])?,
                out_b: w.take(&format!("{p}.attention.output.dense.bias"), &[h])?,
                ln1_w: w.take(&format!("{p}.attention.output.LayerNorm.weight"), &[h])?,
                ln1_b: w.take(&format!("{p}.attention.output.LayerNorm.bias"), &[h])?,
                up_w: w.take(&format!("{p}.intermediate.dense.weight"), &[i, h])?,
                up_b: w.take(&format!("{p}.intermediate.dense.bias"), &[i])?,
                down_w: w.take(&format!("{p}.output.dense.weight"), &[h, i])?,
                down_b: w.take(&format!("{p}.output.dense.bias"), &[h])?,
                ln2_w: w.take(&format!("{p}.output.LayerNorm.weight"), &[h])?,
                ln2_b: w.take(&format!("{p}.output.LayerNorm.bias"), &[h])?,
            });
        }
        Ok(Bert {
            word,
            position,
            token_type,
            ln_w,
            ln_b,
            layers,
            hidden: h,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
            act,
            max_positions: c.max_position_embeddings,
        })
    }

    /// The last hidden state `[batch, len, hidden]` for token ids `[batch, len]`, token type
    /// ids `[batch, len]` and an attention mask `[batch, len]` (1 for tokens, 0 for padding),
    /// or `None` when no text is padded.
    pub(crate) fn forward(
        &self,
        ids: &Tensor,
        types: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l) = ids.size2()?;
        let device = ids.device();
        let positions = Tensor::f_arange(l, (Kind::Int64, device))?;
        let mut x = Tensor::f_embedding(&self.word, ids, -1, false, false)?
            .f_add(&Tensor::f_embedding(
                &self.position,
                &positions,
                -1,
                false,
                false,
            )?)?
            .f_add(&Tensor::f_embedding(
                &self.token_type,
                types,
                -1,
                false,
                false,
            )?)?
            .f_layer_norm(
                [self.hidden],
                Some(&self.ln_w),
                Some(&self.ln_b),
                self.eps,
                true,
            )?;
        // scaled_dot_product_attention takes a boolean mask: true where a key is attended to.
        let attend = match mask {
            Some(m) => Some(m.f_to_kind(Kind::Bool)?.f_view([b, 1, 1, l])?),
            None => None,
        };
        let head = self.hidden / self.heads;
        for layer in &self.layers {
            let qkv = x
                .f_linear(&layer.qkv_w, Some(&layer.qkv_b))?
                .f_view([b, l, 3, self.heads, head])?
                .f_permute([2, 0, 3, 1, 4])?;
            let q = qkv.f_select(0, 0)?;
            let k = qkv.f_select(0, 1)?;
            let v = qkv.f_select(0, 2)?;
            let ctx = Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                attend.as_ref(),
                0.0,
                false,
                None,
                false,
            )?
            .f_transpose(1, 2)?
            .f_reshape([b, l, self.hidden])?;
            let a = ctx
                .f_linear(&layer.out_w, Some(&layer.out_b))?
                .f_add(&x)?
                .f_layer_norm(
                    [self.hidden],
                    Some(&layer.ln1_w),
                    Some(&layer.ln1_b),
                    self.eps,
                    true,
                )?;
            let up = a.f_linear(&layer.up_w, Some(&layer.up_b))?;
            let up = match self.act {
                Activation::Gelu => up.f_gelu("none")?,
                Activation::GeluTanh => up.f_gelu("tanh")?,
                Activation::Relu => up.f_relu()?,
            };
            x = up
                .f_linear(&layer.down_w, Some(&layer.down_b))?
                .f_add(&a)?
                .f_layer_norm(
                    [self.hidden],
                    Some(&layer.ln2_w),
                    Some(&layer.ln2_b),
                    self.eps,
                    true,
                )?;
        }
        Ok(x)
    }
}

fn check_config(c: &BertConfig) -> std::result::Result<(), String> {
    if let Some(t) = &c.model_type
        && t != "bert"
    {
        return Err(format!(
            "model_type '{t}' is not a BERT model (export it to TorchScript instead: docs/gpu.md)"
        ));
    }
    if let Some(p) = &c.position_embedding_type
        && p != "absolute"
    {
        return Err(format!(
            "position_embedding_type '{p}' is not supported (only absolute)"
        ));
    }
    if c.hidden_size <= 0
        || c.num_attention_heads <= 0
        || c.hidden_size % c.num_attention_heads != 0
    {
        return Err(format!(
            "hidden_size {} is not a positive multiple of num_attention_heads {}",
            c.hidden_size, c.num_attention_heads
        ));
    }
    if c.intermediate_size <= 0 || c.num_hidden_layers == 0 || c.max_position_embeddings == 0 {
        return Err(
            "intermediate_size, num_hidden_layers and max_position_embeddings must be positive"
                .into(),
        );
    }
    Ok(())
}
