//! Where a model runs and in which precision.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which device a model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first CUDA device when one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this index.
    Cuda(usize),
}

impl DeviceChoice {
    /// The device libtorch will use. Asking for a CUDA device that is not there is an error
    /// naming the devices present.
    pub fn resolve(self) -> Result<tch::Device> {
        match self {
            DeviceChoice::Auto => Ok(tch::Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Cuda(i) => {
                let present = crate::cuda_device_count();
                if i < present {
                    Ok(tch::Device::Cuda(i))
                } else {
                    Err(Error::settings(
                        "device",
                        format!("cuda:{i} asked for, but {present} CUDA device(s) are present"),
                    ))
                }
            }
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;

    /// `auto`, `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    Error::settings(
                        "device",
                        format!("'{other}' is not auto, cpu, cuda or cuda:N"),
                    )
                }),
        }
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The precision of a model's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats (the reference; the only choice on the CPU).
    #[default]
    F32,
    /// 16-bit floats, on CUDA.
    F16,
    /// bfloat16, on CUDA.
    Bf16,
}

impl Precision {
    pub(crate) fn kind(self) -> tch::Kind {
        match self {
            Precision::F32 => tch::Kind::Float,
            Precision::F16 => tch::Kind::Half,
            Precision::Bf16 => tch::Kind::BFloat16,
        }
    }
}

/// How a model is loaded and run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Options {
    /// The device (`auto`, `cpu`, `cuda`, `cuda:N`).
    pub device: DeviceChoice,
    /// The precision on CUDA (`f32`, `f16`, `bf16`); the CPU always runs `f32`.
    pub precision: Precision,
    /// libtorch's intra-op threads for CPU inference (process-wide). `None`: libtorch's
    /// default (the number of cores).
    pub threads: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            device: DeviceChoice::Auto,
            precision: Precision::F32,
            threads: None,
        }
    }
}

impl Options {
    /// Options for the CPU.
    pub fn cpu() -> Options {
        Options {
            device: DeviceChoice::Cpu,
            ..Options::default()
        }
    }

    /// With `n` intra-op threads.
    pub fn threads(mut self, n: usize) -> Options {
        self.threads = Some(n);
        self
    }

    /// On this device.
    pub fn device(mut self, device: DeviceChoice) -> Options {
        self.device = device;
        self
    }

    /// In this precision (CUDA only).
    pub fn precision(mut self, precision: Precision) -> Options {
        self.precision = precision;
        self
    }

    /// The device and the tensor kind to run in; applies the thread count.
    pub(crate) fn apply(&self) -> Result<(tch::Device, tch::Kind)> {
        let device = self.device.resolve()?;
        if let Some(n) = self.threads {
            let n = i32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| Error::settings("threads", format!("{n} is not 1 or more")))?;
            tch::set_num_threads(n);
        }
        let kind = match (device, self.precision) {
            (tch::Device::Cpu, Precision::F32) => tch::Kind::Float,
            (tch::Device::Cpu, p) => {
                return Err(Error::settings(
                    "precision",
                    format!("{p:?} runs on CUDA only; the CPU runs f32"),
                ));
            }
            (_, p) => p.kind(),
        };
        Ok((device, kind))
    }
}

pub(crate) fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
