//! Real GPU models: the capacity NVML reports, compute capability and dense bf16 tensor throughput.
//!
//! `total_mib` is what `nvidia-smi --query-gpu=memory.total` prints on the default configuration
//! (ECC on for data-centre cards, which is why an A40 shows 46068 MiB, not 49152).
//! `bf16_dense_tflops` is the datasheet figure without sparsity, with fp32 accumulation (what
//! training uses; GeForce cards run that at half their fp16-accumulate rate). `None` = no bf16.

use crate::units::MIB;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownGpu {
    /// Canonical short name, accepted by `--gpus` (`8xh100`).
    pub key: &'static str,
    /// Other accepted spellings for `--gpus`.
    pub aliases: &'static [&'static str],
    /// The name NVML reports (the first one is used for described GPUs).
    pub nvml_names: &'static [&'static str],
    /// Family token that appears in every NVML name of this model (`H100`, `4090`).
    family: &'static str,
    /// Tokens of which one must appear in the NVML name (empty: the family's default variant).
    variant: &'static [&'static str],
    pub total_mib: u64,
    pub compute_capability: (u32, u32),
    pub bf16_dense_tflops: Option<f64>,
}

impl KnownGpu {
    pub fn total_bytes(&self) -> u64 {
        self.total_mib * MIB
    }

    /// The NVML-style full name, as a described GPU shows it.
    pub fn nvml_name(&self) -> &'static str {
        self.nvml_names[0]
    }

    pub fn supports_bf16(&self) -> bool {
        self.compute_capability.0 >= 8
    }
}

/// Ordered so that within a family the specific variants come before the default one.
pub static KNOWN_GPUS: &[KnownGpu] = &[
    KnownGpu {
        key: "rtx3090",
        aliases: &["rtx-3090", "3090", "geforce-rtx-3090"],
        nvml_names: &["NVIDIA GeForce RTX 3090"],
        family: "3090",
        variant: &[],
        total_mib: 24576,
        compute_capability: (8, 6),
        bf16_dense_tflops: Some(71.0),
    },
    KnownGpu {
        key: "rtx4090",
        aliases: &["rtx-4090", "4090", "geforce-rtx-4090"],
        nvml_names: &["NVIDIA GeForce RTX 4090"],
        family: "4090",
        variant: &[],
        total_mib: 24564,
        compute_capability: (8, 9),
        bf16_dense_tflops: Some(165.2),
    },
    KnownGpu {
        key: "rtx5090",
        aliases: &["rtx-5090", "5090", "geforce-rtx-5090"],
        nvml_names: &["NVIDIA GeForce RTX 5090"],
        family: "5090",
        variant: &[],
        total_mib: 32607,
        compute_capability: (12, 0),
        bf16_dense_tflops: Some(209.5),
    },
    KnownGpu {
        key: "rtx-a6000",
        aliases: &["a6000", "rtxa6000"],
        nvml_names: &["NVIDIA RTX A6000"],
        family: "A6000",
        variant: &[],
        total_mib: 49140,
        compute_capability: (8, 6),
        bf16_dense_tflops: Some(154.8),
    },
    KnownGpu {
        key: "a10",
        aliases: &["a10-24gb"],
        nvml_names: &["NVIDIA A10"],
        family: "A10",
        variant: &[],
        total_mib: 23028,
        compute_capability: (8, 6),
        bf16_dense_tflops: Some(125.0),
    },
    KnownGpu {
        key: "a40",
        aliases: &["a40-48gb"],
        nvml_names: &["NVIDIA A40"],
        family: "A40",
        variant: &[],
        total_mib: 46068,
        compute_capability: (8, 6),
        bf16_dense_tflops: Some(149.7),
    },
    KnownGpu {
        key: "l4",
        aliases: &["l4-24gb"],
        nvml_names: &["NVIDIA L4"],
        family: "L4",
        variant: &[],
        total_mib: 23034,
        compute_capability: (8, 9),
        bf16_dense_tflops: Some(121.0),
    },
    KnownGpu {
        key: "l40s",
        aliases: &["l40-s"],
        nvml_names: &["NVIDIA L40S"],
        family: "L40S",
        variant: &[],
        total_mib: 46068,
        compute_capability: (8, 9),
        bf16_dense_tflops: Some(362.05),
    },
    KnownGpu {
        key: "l40",
        aliases: &["l40-48gb"],
        nvml_names: &["NVIDIA L40"],
        family: "L40",
        variant: &[],
        total_mib: 46068,
        compute_capability: (8, 9),
        bf16_dense_tflops: Some(181.05),
    },
    KnownGpu {
        key: "a100-80gb",
        aliases: &[
            "a100",
            "a100-80g",
            "a100-sxm4-80gb",
            "a100-80gb-pcie",
            "a100-pcie-80gb",
        ],
        nvml_names: &["NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"],
        family: "A100",
        variant: &["80GB"],
        total_mib: 81920,
        compute_capability: (8, 0),
        bf16_dense_tflops: Some(312.0),
    },
    KnownGpu {
        key: "a100-40gb",
        aliases: &[
            "a100-40g",
            "a100-sxm4-40gb",
            "a100-pcie-40gb",
            "a100-40gb-pcie",
        ],
        nvml_names: &["NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"],
        family: "A100",
        variant: &[],
        total_mib: 40960,
        compute_capability: (8, 0),
        bf16_dense_tflops: Some(312.0),
    },
    KnownGpu {
        key: "h100-pcie",
        aliases: &["h100-pcie-80gb"],
        nvml_names: &["NVIDIA H100 PCIe"],
        family: "H100",
        variant: &["PCIE"],
        total_mib: 81559,
        compute_capability: (9, 0),
        bf16_dense_tflops: Some(756.0),
    },
    KnownGpu {
        key: "h100-nvl",
        aliases: &["h100-94gb"],
        nvml_names: &["NVIDIA H100 NVL"],
        family: "H100",
        variant: &["NVL"],
        total_mib: 95830,
        compute_capability: (9, 0),
        bf16_dense_tflops: Some(835.5),
    },
    KnownGpu {
        key: "h100",
        aliases: &[
            "h100-sxm",
            "h100-sxm5",
            "h100-80gb",
            "h100-80gb-hbm3",
            "h100-sxm-80gb",
        ],
        nvml_names: &["NVIDIA H100 80GB HBM3"],
        family: "H100",
        variant: &[],
        total_mib: 81559,
        compute_capability: (9, 0),
        bf16_dense_tflops: Some(989.4),
    },
    KnownGpu {
        key: "h200-nvl",
        aliases: &[],
        nvml_names: &["NVIDIA H200 NVL"],
        family: "H200",
        variant: &["NVL"],
        total_mib: 143771,
        compute_capability: (9, 0),
        bf16_dense_tflops: Some(835.5),
    },
    KnownGpu {
        key: "h200",
        aliases: &["h200-sxm", "h200-141gb"],
        nvml_names: &["NVIDIA H200"],
        family: "H200",
        variant: &[],
        total_mib: 143771,
        compute_capability: (9, 0),
        bf16_dense_tflops: Some(989.4),
    },
    KnownGpu {
        key: "b200",
        aliases: &["b200-sxm", "b200-180gb"],
        nvml_names: &["NVIDIA B200"],
        family: "B200",
        variant: &[],
        total_mib: 183359,
        compute_capability: (10, 0),
        bf16_dense_tflops: Some(2250.0),
    },
    // Pre-Ampere cards are listed so that both paths can name them when refusing them (no bf16).
    KnownGpu {
        key: "v100",
        aliases: &["v100-32gb", "v100-sxm2-32gb"],
        nvml_names: &["Tesla V100-SXM2-32GB", "Tesla V100-PCIE-32GB"],
        family: "V100",
        variant: &[],
        total_mib: 32510,
        compute_capability: (7, 0),
        bf16_dense_tflops: None,
    },
    KnownGpu {
        key: "t4",
        aliases: &["tesla-t4"],
        nvml_names: &["Tesla T4"],
        family: "T4",
        variant: &[],
        total_mib: 15360,
        compute_capability: (7, 5),
        bf16_dense_tflops: None,
    },
];

/// Upper-case alphanumeric tokens of a GPU name, without the vendor and brand words.
fn tokens(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_uppercase)
        .filter(|t| !matches!(t.as_str(), "NVIDIA" | "GEFORCE" | "TESLA" | "RTX"))
        .collect()
}

/// Mobile and cut-down variants share the family token but not the figures.
const FOREIGN_VARIANTS: &[&str] = &["LAPTOP", "MOBILE", "MAX", "D", "TI", "SUPER"];

/// The model behind an NVML name (`NVIDIA H100 80GB HBM3`, `NVIDIA A100-SXM4-40GB`...).
/// Exact names first, then family token plus variant token, so a new board name of a known
/// chip (`NVIDIA A100-SXM4-80GB-XYZ`) still finds its figures; unknown models give `None`.
pub fn lookup_by_name(nvml_name: &str) -> Option<&'static KnownGpu> {
    let wanted = tokens(nvml_name);
    if wanted.is_empty() {
        return None;
    }
    if let Some(exact) = KNOWN_GPUS
        .iter()
        .find(|g| g.nvml_names.iter().any(|n| tokens(n) == wanted))
    {
        return Some(exact);
    }
    if wanted
        .iter()
        .any(|t| FOREIGN_VARIANTS.contains(&t.as_str()))
    {
        return None;
    }
    KNOWN_GPUS.iter().find(|g| {
        wanted.iter().any(|t| t == g.family)
            && (g.variant.is_empty() || g.variant.iter().any(|v| wanted.iter().any(|t| t == v)))
    })
}

/// Normal form of a `--gpus` model word: lower case, `_` and spaces as `-`.
fn alias_form(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            '_' | ' ' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// The model named in a `--gpus` spec (`h100`, `a100-40gb`, `RTX4090`).
pub fn lookup_alias(alias: &str) -> Option<&'static KnownGpu> {
    let wanted = alias_form(alias);
    KNOWN_GPUS
        .iter()
        .find(|g| g.key == wanted || g.aliases.contains(&wanted.as_str()))
}

/// The accepted model keys, for error messages.
pub fn known_keys() -> Vec<&'static str> {
    KNOWN_GPUS.iter().map(|g| g.key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_aliases_are_unique_and_in_normal_form() {
        let mut seen = std::collections::HashSet::new();
        for g in KNOWN_GPUS {
            for a in std::iter::once(&g.key).chain(g.aliases.iter()) {
                assert_eq!(alias_form(a), *a, "{a} is not in normal form");
                assert!(seen.insert(*a), "alias {a} appears twice");
            }
        }
    }

    #[test]
    fn every_nvml_name_finds_its_own_entry() {
        for g in KNOWN_GPUS {
            for n in g.nvml_names {
                assert_eq!(lookup_by_name(n).map(|k| k.key), Some(g.key), "{n}");
            }
        }
    }
}
