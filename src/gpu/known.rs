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
    /// The memory size the card is sold with ("24 GB"): vendors mean GiB, and NVML shows less
    /// (reserved memory, ECC). `--gpus 4x24GB` is read through this (spec.rs).
    pub marketed_gb: u32,
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
        marketed_gb: 24,
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
        marketed_gb: 24,
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
        marketed_gb: 32,
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
        marketed_gb: 48,
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
        marketed_gb: 24,
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
        marketed_gb: 48,
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
        marketed_gb: 24,
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
        marketed_gb: 48,
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
        marketed_gb: 48,
        total_mib: 46068,
        compute_capability: (8, 9),
        bf16_dense_tflops: Some(181.05),
    },
    KnownGpu {
        key: "a100-80gb",
        aliases: &[
            "a100-80g",
            "a100-sxm4-80gb",
            "a100-80gb-pcie",
            "a100-pcie-80gb",
        ],
        nvml_names: &["NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"],
        family: "A100",
        variant: &["80GB"],
        marketed_gb: 80,
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
        marketed_gb: 40,
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
        marketed_gb: 80,
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
        marketed_gb: 94,
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
        marketed_gb: 80,
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
        marketed_gb: 141,
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
        marketed_gb: 141,
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
        marketed_gb: 180,
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
        marketed_gb: 32,
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
        marketed_gb: 16,
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

/// Names people use for more than one card with different memory: refused, with the choices.
/// (`a100` is sold with 40 GB and with 80 GB, in SXM4 and PCIe forms alike.)
pub static AMBIGUOUS: &[(&str, &[&str])] = &[
    ("a100", &["a100-40gb", "a100-80gb"]),
    ("a100-sxm", &["a100-40gb", "a100-80gb"]),
    ("a100-sxm4", &["a100-40gb", "a100-80gb"]),
    ("a100-pcie", &["a100-40gb", "a100-80gb"]),
];

/// The cards an ambiguous `--gpus` model word may mean, if it is one.
pub fn ambiguous(alias: &str) -> Option<Vec<&'static KnownGpu>> {
    let wanted = alias_form(alias);
    let (_, keys) = AMBIGUOUS.iter().find(|(a, _)| *a == wanted)?;
    Some(keys.iter().filter_map(|k| lookup_alias(k)).collect())
}

/// The bf16-capable cards sold with `gb` GB of memory (`24` -> rtx3090, rtx4090, a10, l4).
pub fn sold_with(gb: u64) -> Vec<&'static KnownGpu> {
    KNOWN_GPUS
        .iter()
        .filter(|g| u64::from(g.marketed_gb) == gb && g.supports_bf16())
        .collect()
}

/// Edit distance (insertions, deletions, substitutions) between two short ASCII words.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The model key a mistyped `--gpus` model word most likely meant (`rtx490`, `h1000`, `l40x`).
/// Only close matches: at most 2 edits, and fewer than a third of the word.
pub fn suggest(word: &str) -> Option<&'static str> {
    let wanted = alias_form(word);
    if wanted.len() > 40 {
        return None;
    }
    let limit = 2.min(wanted.len() / 3).max(1);
    KNOWN_GPUS
        .iter()
        .flat_map(|g| {
            std::iter::once(g.key)
                .chain(g.aliases.iter().copied())
                .map(move |a| (g.key, a))
        })
        .chain(AMBIGUOUS.iter().map(|(a, _)| (*a, *a)))
        .map(|(key, a)| (edit_distance(&wanted, a), key))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, key)| key)
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
    fn ambiguous_names_are_no_alias_and_list_real_models() {
        for (name, keys) in AMBIGUOUS {
            assert_eq!(alias_form(name), *name);
            assert!(lookup_alias(name).is_none(), "{name} is also an alias");
            assert_eq!(ambiguous(name).unwrap().len(), keys.len(), "{name}");
        }
    }

    #[test]
    fn suggestions_are_close_only() {
        assert_eq!(suggest("rtx490"), Some("rtx4090"));
        assert_eq!(suggest("h1000"), Some("h100"));
        assert_eq!(suggest("RTX-4090"), Some("rtx4090"));
        assert_eq!(suggest("banana"), None);
        assert_eq!(suggest("x"), None);
    }

    #[test]
    fn every_bf16_card_is_sold_with_at_least_what_nvml_shows_in_gib() {
        for g in KNOWN_GPUS {
            let sold = u64::from(g.marketed_gb) * 1024;
            assert!(
                g.total_mib <= sold,
                "{}: {} MiB > {sold}",
                g.key,
                g.total_mib
            );
            assert!(
                g.total_mib * 10 >= sold * 9,
                "{}: marketed size far off",
                g.key
            );
        }
        let keys: Vec<_> = sold_with(24).iter().map(|g| g.key).collect();
        assert_eq!(keys, ["rtx3090", "rtx4090", "a10", "l4"]);
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
