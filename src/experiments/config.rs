//! Study configuration: a TOML preset, then `--set key=value` overrides, then
//! typed structs with defaults. The resolved config is saved next to the results.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::backend::{Activation, Backend};
use crate::data::DatasetName;
use crate::models::{Classifier, Mlp, MlpConfig, TransformerConfig, Vit, VitConfig};
use crate::optim::{OPTIMIZER_NAMES, OptimizerConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Tasks are disjoint class groups; one shared 10-way head; no replay.
    ClassIncremental,
    /// Every task is all 10 classes under its own fixed pixel permutation.
    Permuted,
    /// One task of all classes: plain training, the reference point.
    Joint,
}

/// Which network a study trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// `hidden` widths with `activation` between them.
    Mlp,
    /// A Vision Transformer configured by `[vit]`.
    Vit,
}

/// The ViT of a study (image side from the dataset).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VitSettings {
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
}

impl Default for VitSettings {
    /// Small enough for a 2-core CPU: 28×28 MNIST in 16 patches of 7×7.
    fn default() -> Self {
        Self { patch: 7, dim: 64, depth: 4, heads: 4, mlp_ratio: 4 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitMnistConfig {
    pub dataset: DatasetName,
    pub protocol: Protocol,
    /// Class groups of the class-incremental protocol, in training order.
    pub class_groups: Vec<Vec<u8>>,
    /// Number of tasks of the permuted protocol.
    pub permuted_tasks: usize,
    pub model: ModelKind,
    /// MLP hidden widths (model = "mlp").
    pub hidden: Vec<usize>,
    pub activation: Activation,
    pub vit: VitSettings,
    pub epochs_per_task: usize,
    pub batch_size: usize,
    pub seeds: Vec<u64>,
    /// Labels of the optimizers to run: a known name (default hyperparameters)
    /// or a key of `optimizer` below.
    pub optimizers: Vec<String>,
    /// Per-label hyperparameters; `kind` defaults to the label.
    pub optimizer: BTreeMap<String, toml::Table>,
    /// Spectra every this many steps (and always at task boundaries); 0 = boundaries only.
    pub probe_every: u64,
    /// Standardize pixels with the training set's mean and std.
    pub standardize: bool,
    /// Cap on training examples per task (quick checks); None = all.
    pub max_train_per_task: Option<usize>,
    pub eval_batch: usize,
}

impl Default for SplitMnistConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetName::Mnist,
            protocol: Protocol::ClassIncremental,
            class_groups: crate::data::default_class_groups(),
            permuted_tasks: 5,
            model: ModelKind::Mlp,
            hidden: vec![256, 256],
            activation: Activation::Relu,
            vit: VitSettings::default(),
            epochs_per_task: 1,
            batch_size: 128,
            seeds: vec![0],
            optimizers: ["sgd", "adamw", "muon", "shampoo"].map(String::from).to_vec(),
            optimizer: BTreeMap::new(),
            probe_every: 50,
            standardize: true,
            max_train_per_task: None,
            eval_batch: 1000,
        }
    }
}

/// One optimizer to run, by its label.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedOptimizer {
    pub label: String,
    pub config: OptimizerConfig,
}

impl SplitMnistConfig {
    /// Reads a preset (if any), applies `key=value` overrides (TOML values; dotted
    /// keys reach into tables, e.g. `optimizer.muon.lr=0.01`), and validates.
    pub fn resolve(preset: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let config: Self = read_config(preset, overrides)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.epochs_per_task == 0 || self.eval_batch == 0 {
            bail!("batch_size, epochs_per_task and eval_batch must be positive");
        }
        if self.seeds.is_empty() || self.optimizers.is_empty() {
            bail!("need at least one seed and one optimizer");
        }
        if self.hidden.contains(&0) {
            bail!("hidden widths must be positive, got {:?}", self.hidden);
        }
        self.named_optimizers().map(|_| ())
    }

    /// The configured model for inputs of `pixels` values in `channels` planes
    /// (square images for a ViT).
    pub fn build_model<B: Backend>(&self, backend: &B, pixels: usize, channels: usize, seed: u64) -> Result<Box<dyn Classifier<B>>> {
        Ok(match self.model {
            ModelKind::Mlp => {
                let config = MlpConfig { input: pixels, hidden: self.hidden.clone(), classes: 10, activation: self.activation };
                Box::new(Mlp::new(backend, config, seed))
            }
            ModelKind::Vit => {
                let side = ((pixels / channels) as f64).sqrt().round() as usize;
                let v = self.vit;
                if channels * side * side != pixels || side % v.patch != 0 {
                    bail!(
                        "a ViT needs square images whose side is a multiple of the patch ({}); got {pixels} values in {channels} channels",
                        v.patch
                    );
                }
                if v.dim % v.heads != 0 {
                    bail!("vit.dim {} must be a multiple of vit.heads {}", v.dim, v.heads);
                }
                let body = TransformerConfig { dim: v.dim, depth: v.depth, heads: v.heads, mlp_ratio: v.mlp_ratio };
                Box::new(Vit::new(backend, VitConfig { image: side, channels, patch: v.patch, classes: 10, body }, seed))
            }
        })
    }

    pub fn named_optimizers(&self) -> Result<Vec<NamedOptimizer>> {
        named_optimizers(&self.optimizers, &self.optimizer)
    }

    /// The config as TOML with every optimizer's hyperparameters spelled out.
    pub fn to_resolved_toml(&self) -> Result<String> {
        let resolved = Self { optimizer: spelled_out(&self.optimizers, &self.optimizer)?, ..self.clone() };
        Ok(toml::to_string_pretty(&resolved)?)
    }
}

/// A config of type `T` from a preset (if any) and `key=value` overrides.
pub fn read_config<T: serde::de::DeserializeOwned>(preset: Option<&Path>, overrides: &[String]) -> Result<T> {
    let mut table: toml::Table = match preset {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading preset {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing preset {}", p.display()))?
        }
        None => toml::Table::new(),
    };
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    table.try_into().context("invalid configuration")
}

/// Resolves optimizer labels: a label's `[optimizer.LABEL]` table (whose `kind`
/// defaults to the label), else a known optimizer's defaults.
pub fn named_optimizers(labels: &[String], tables: &BTreeMap<String, toml::Table>) -> Result<Vec<NamedOptimizer>> {
    labels
        .iter()
        .map(|label| {
            let config = match tables.get(label) {
                Some(table) => {
                    let mut table = table.clone();
                    table.entry("kind").or_insert_with(|| toml::Value::String(label.clone()));
                    let kind = table["kind"].as_str().unwrap_or_default().to_string();
                    if !OPTIMIZER_NAMES.contains(&kind.as_str()) {
                        bail!("optimizer {label:?}: unknown kind {kind:?}; known: {}", OPTIMIZER_NAMES.join(", "));
                    }
                    table.try_into().with_context(|| format!("optimizer {label:?}: invalid hyperparameters"))?
                }
                None => OptimizerConfig::by_name(label).with_context(|| {
                    let defined: Vec<_> = tables.keys().map(String::as_str).collect();
                    format!("optimizer label {label:?} is neither a known optimizer nor defined in [optimizer.*] (defined: {defined:?})")
                })?,
            };
            Ok(NamedOptimizer { label: label.clone(), config })
        })
        .collect()
}

/// Every label's hyperparameters written out, for the saved config.
pub fn spelled_out(labels: &[String], tables: &BTreeMap<String, toml::Table>) -> Result<BTreeMap<String, toml::Table>> {
    let mut all = tables.clone();
    for named in named_optimizers(labels, tables)? {
        all.insert(named.label, toml::Table::try_from(&named.config)?);
    }
    Ok(all)
}

fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment.split_once('=').with_context(|| format!("override {assignment:?} is not key=value"))?;
    // A TOML value if it parses as one (numbers, booleans, arrays), else a string.
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .map_or_else(|_| toml::Value::String(raw.to_string()), |mut t| t.remove("v").expect("parsed"));
    let mut parts: Vec<&str> = key.trim().split('.').collect();
    let last = parts.pop().expect("split yields one part");
    let mut here = table;
    for part in parts {
        here = here
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("override {assignment:?}: {part:?} is not a table"))?;
    }
    here.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_study() {
        let c = SplitMnistConfig::resolve(None, &[]).unwrap();
        let labels: Vec<_> = c.named_optimizers().unwrap().into_iter().map(|n| n.label).collect();
        assert_eq!(labels, ["sgd", "adamw", "muon", "shampoo"]);
        assert_eq!(c.class_groups.len(), 5);
    }

    #[test]
    fn overrides_reach_optimizer_tables() {
        let o = [
            "optimizers=[\"muon-all\", \"sgd\"]",
            "optimizer.muon-all.kind=muon",
            "optimizer.muon-all.all_matrices=true",
            "optimizer.sgd.lr=0.5",
            "seeds=[1,2]",
        ];
        let c = SplitMnistConfig::resolve(None, &o.map(String::from)).unwrap();
        let named = c.named_optimizers().unwrap();
        assert!(matches!(&named[0].config, OptimizerConfig::Muon(m) if m.all_matrices));
        assert!(matches!(&named[1].config, OptimizerConfig::Sgd(s) if s.lr == 0.5));
        assert_eq!(c.seeds, [1, 2]);
        // The resolved TOML round-trips to the same study.
        let back: SplitMnistConfig = toml::from_str(&c.to_resolved_toml().unwrap()).unwrap();
        assert_eq!(back.named_optimizers().unwrap(), named);
    }

    #[test]
    fn every_preset_resolves() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        let presets: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
        assert!(presets.len() >= 4, "{presets:?}");
        for p in presets {
            SplitMnistConfig::resolve(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        }
    }

    #[test]
    fn bad_names_and_keys_are_clear_errors() {
        let err = SplitMnistConfig::resolve(None, &["optimizers=[\"adamm\"]".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("unknown optimizer \"adamm\""), "{err:#}");
        let err = SplitMnistConfig::resolve(None, &["optimizer.sgd.momentm=0.5".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("momentm"), "{err:#}");
        let err = SplitMnistConfig::resolve(None, &["batch_sise=3".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("batch_sise"), "{err:#}");
        assert!(SplitMnistConfig::resolve(None, &["noequals".into()]).is_err());
    }
}
