//! Study configuration: a study's defaults, then a TOML preset (or the saved
//! configuration of the study being resumed), then `--set key=value`
//! overrides, merged key by key into one table; then typed structs, validated
//! before anything is read or written. The resolved table is saved next to the
//! results, with every optimizer's hyperparameters spelled out.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::{Activation, Backend};
use crate::data::DatasetName;
use crate::models::{Classifier, FeedForward, Mlp, MlpConfig, TransformerConfig, Vit, VitConfig};
use crate::optim::{OptimizerConfig, Schedule};

/// What every study's configuration provides to the shared resolution.
pub trait StudyConfig: Serialize + DeserializeOwned + Default + Clone {
    /// The labels to run and the per-label hyperparameter tables.
    fn optimizer_tables(&self) -> (&[String], &BTreeMap<String, toml::Table>);
    fn optimizer_tables_mut(&mut self) -> &mut BTreeMap<String, toml::Table>;
    fn seeds(&self) -> &[u64];
    /// Every value in range, every size consistent, the model within memory.
    fn validate(&self) -> Result<()>;

    /// The study's defaults, with `base` (a preset or a saved configuration)
    /// and then `overrides` merged in key by key, validated.
    fn resolve(base: Option<&toml::Table>, overrides: &[String]) -> Result<Self> {
        let mut table = toml::Table::try_from(Self::default()).context("serialising the defaults")?;
        if let Some(base) = base {
            merge(&mut table, base.clone());
        }
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let config: Self = table.try_into().context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    fn named_optimizers(&self) -> Result<Vec<NamedOptimizer>> {
        let (labels, tables) = self.optimizer_tables();
        named_optimizers(labels, tables)
    }

    /// The configuration as saved: every label's hyperparameters spelled out,
    /// numbers as a person types them.
    fn resolved_table(&self) -> Result<toml::Table> {
        let mut out = self.clone();
        let (labels, tables) = self.optimizer_tables();
        *out.optimizer_tables_mut() = spelled_out(labels, tables)?;
        let mut table = toml::Table::try_from(out)?;
        table.iter_mut().for_each(|(_, v)| shortest_floats(v));
        Ok(table)
    }
}

/// Writes every float that is exactly an f32 (the hyperparameters) with the
/// fewest digits that give back the same f32: `lr = 0.02`, not the
/// `0.019999999552965164` its widening to f64 would print. Parsing it again
/// gives the same f32, so nothing a study trains with changes.
fn shortest_floats(value: &mut toml::Value) {
    match value {
        toml::Value::Float(x) if f64::from(*x as f32) == *x && x.is_finite() => {
            *x = (*x as f32).to_string().parse().expect("an f32 prints as a number");
        }
        toml::Value::Array(items) => items.iter_mut().for_each(shortest_floats),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| shortest_floats(v)),
        _ => {}
    }
}

/// Reads a TOML preset.
pub fn read_preset(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading preset {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing preset {}", path.display()))
}

/// `top` merged into `base`: tables key by key, any other value replaced. A
/// table of another `kind` replaces rather than merges, so an optimizer's
/// `base = { kind = "muon" }` inherits none of AdamW's keys.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) if t.get("kind").is_none_or(|k| b.get("kind") == Some(k)) => merge(b, t),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// `value > 0` for a count or size, naming the key.
pub fn positive<T: PartialOrd + Default + Display>(key: &str, value: T) -> Result<()> {
    ensure!(value > T::default(), "{key} must be positive, got {value}");
    Ok(())
}

/// At least one seed, none twice.
pub fn check_seeds(seeds: &[u64]) -> Result<()> {
    ensure!(!seeds.is_empty(), "need at least one seed");
    if let Some(d) = seeds.iter().enumerate().find(|(i, s)| seeds[..*i].contains(s)) {
        bail!("seed {} is listed twice", d.1);
    }
    Ok(())
}

/// At least one label, none twice, each a usable file-name part that resolves
/// to an optimizer whose hyperparameters are in range.
pub fn check_optimizers(labels: &[String], tables: &BTreeMap<String, toml::Table>) -> Result<()> {
    ensure!(!labels.is_empty(), "need at least one optimizer");
    for (i, label) in labels.iter().enumerate() {
        ensure!(!labels[..i].contains(label), "optimizer label {label:?} is listed twice");
        let ok_chars = !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c));
        // `-s<digit>` would make run ids (`<label>-s<seed>`) ambiguous.
        let ambiguous = label.match_indices("-s").any(|(k, _)| label[k + 2..].starts_with(|c: char| c.is_ascii_digit()));
        ensure!(
            ok_chars && !ambiguous && !label.starts_with('.'),
            "optimizer label {label:?}: use letters, digits, `_`, `.`, `+` and `-` (not starting with `.`, no `-s` before a digit)"
        );
    }
    for named in named_optimizers(labels, tables)? {
        named.config.validate().with_context(|| format!("optimizer {:?}", named.label))?;
    }
    Ok(())
}

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
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VitSettings {
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    /// `gelu` or `swiglu` (see `FeedForward`).
    pub feed_forward: FeedForward,
    /// Normal initialisation's standard deviation (see `TransformerConfig::init_std`).
    pub init_std: f32,
}

impl Default for VitSettings {
    /// Small enough for a 2-core CPU: 28×28 MNIST in 16 patches of 7×7.
    fn default() -> Self {
        Self { patch: 7, dim: 64, depth: 4, heads: 4, mlp_ratio: 4, feed_forward: FeedForward::Gelu, init_std: 0.02 }
    }
}

/// What `exp vit` sets before a preset and the flags: the ViT, trained on all
/// classes at once.
pub const VIT_DEFAULTS: [&str; 2] = ["model=\"vit\"", "protocol=\"joint\""];

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
    /// The representations on the test sets at the end of every epoch too, not
    /// only of every task: how rank and sparsity form during training (`000`'s
    /// "checkpoints between epochs").
    pub representations_every_epoch: bool,
    /// Standardize pixels with the training set's mean and std.
    pub standardize: bool,
    /// Cap on training examples per task (quick checks); None = all.
    pub max_train_per_task: Option<usize>,
    pub eval_batch: usize,
    /// Seed of the permuted protocol's pixel permutations (one set per study, so
    /// every run and seed sees the same tasks).
    pub permutation_seed: u64,
    /// Learning-rate schedule over each run (all tasks), on every parameter group.
    pub schedule: Schedule,
    /// Fraction of each task's training examples held out for validation (never
    /// trained on; evaluated with the test sets; what sweeps select on). 0: none.
    pub validation_fraction: f64,
    /// Seed of which examples are held out (one choice per study, recorded in
    /// its folder as `validation.toml`).
    pub validation_seed: u64,
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
            representations_every_epoch: false,
            standardize: true,
            max_train_per_task: None,
            eval_batch: 1000,
            permutation_seed: 0,
            schedule: Schedule::default(),
            validation_fraction: 0.0,
            validation_seed: 0,
        }
    }
}

/// One optimizer to run, by its label.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedOptimizer {
    pub label: String,
    pub config: OptimizerConfig,
}

impl StudyConfig for SplitMnistConfig {
    fn optimizer_tables(&self) -> (&[String], &BTreeMap<String, toml::Table>) {
        (&self.optimizers, &self.optimizer)
    }

    fn optimizer_tables_mut(&mut self) -> &mut BTreeMap<String, toml::Table> {
        &mut self.optimizer
    }

    fn seeds(&self) -> &[u64] {
        &self.seeds
    }

    fn validate(&self) -> Result<()> {
        positive("batch_size", self.batch_size)?;
        positive("epochs_per_task", self.epochs_per_task)?;
        positive("eval_batch", self.eval_batch)?;
        // The warmup is checked against the run's length once the data is loaded.
        self.schedule.validate(None)?;
        ensure!(
            (0.0..1.0).contains(&self.validation_fraction),
            "validation_fraction must be in [0, 1) (0: no validation split), got {}",
            self.validation_fraction
        );
        if let Some(m) = self.max_train_per_task {
            positive("max_train_per_task", m)?;
        }
        match self.protocol {
            Protocol::ClassIncremental => crate::data::tasks::check_groups(&self.class_groups).context("class_groups")?,
            Protocol::Permuted => positive("permuted_tasks", self.permuted_tasks)?,
            Protocol::Joint => {}
        }
        let (channels, side) = self.dataset.image_shape();
        match self.model {
            ModelKind::Mlp => {
                ensure!(!self.hidden.is_empty(), "hidden must list at least one width");
                for (i, &w) in self.hidden.iter().enumerate() {
                    positive(&format!("hidden[{i}]"), w)?;
                }
            }
            ModelKind::Vit => {
                let v = &self.vit;
                positive("vit.patch", v.patch)?;
                ensure!(side % v.patch == 0, "vit.patch {} does not divide the {side}×{side} images of {}", v.patch, self.dataset.as_str());
                v.body().validate("vit")?;
            }
        }
        check_seeds(&self.seeds)?;
        check_optimizers(&self.optimizers, &self.optimizer)?;
        super::memory::check(self.memory_estimate(channels * side * side))
    }
}

impl VitSettings {
    fn body(&self) -> TransformerConfig {
        let Self { patch: _, dim, depth, heads, mlp_ratio, feed_forward, init_std } = *self;
        TransformerConfig { dim, depth, heads, mlp_ratio, feed_forward, init_std }
    }
}

impl SplitMnistConfig {
    /// Bytes one run needs at its peak, for inputs of `pixels` values.
    fn memory_estimate(&self, pixels: usize) -> super::memory::Estimate {
        let b = self.batch_size.max(self.eval_batch);
        match self.model {
            ModelKind::Mlp => {
                let widths: Vec<usize> = std::iter::once(pixels).chain(self.hidden.iter().copied()).chain([10]).collect();
                let params = widths.windows(2).fold(0usize, |n, w| n.saturating_add(w[0].saturating_mul(w[1]).saturating_add(w[1])));
                let activations = widths.iter().fold(0usize, |n, &w| n.saturating_add(b.saturating_mul(w).saturating_mul(3)));
                let widest = widths.windows(2).map(|w| w[0].saturating_mul(w[1])).max().unwrap_or(0);
                super::memory::Estimate::new(params, activations, widest)
            }
            ModelKind::Vit => {
                let v = &self.vit;
                let (_, side) = self.dataset.image_shape();
                let tokens = (side / v.patch.max(1)).pow(2) + 1;
                let rows = b.saturating_mul(tokens);
                let d = v.dim;
                let block = d.saturating_mul(d).saturating_mul(4 + 2 * v.mlp_ratio);
                let params = block.saturating_mul(v.depth).saturating_add(pixels.saturating_mul(d));
                let activations = rows.saturating_mul(d).saturating_mul(8 + 3 * v.mlp_ratio).saturating_mul(v.depth.max(1));
                super::memory::Estimate::new(params, activations, d.saturating_mul(d.saturating_mul(v.mlp_ratio)))
            }
        }
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
                if channels * side * side != pixels || !side.is_multiple_of(v.patch) {
                    bail!(
                        "a ViT needs square images whose side is a multiple of the patch ({}); got {pixels} values in {channels} channels",
                        v.patch
                    );
                }
                Box::new(Vit::new(backend, VitConfig { image: side, channels, patch: v.patch, classes: 10, body: v.body() }, seed))
            }
        })
    }
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
                    let kind = match table.remove("kind") {
                        Some(toml::Value::String(kind)) => kind,
                        Some(other) => bail!("optimizer {label:?}: kind must be a name, got {other}"),
                        None => label.clone(),
                    };
                    // The kind's defaults (`normuon`'s, `amsgrad`'s… as well as the
                    // serialized kinds'), overridden key by key.
                    let defaults = OptimizerConfig::by_name(&kind).with_context(|| format!("optimizer {label:?}"))?;
                    let mut merged = toml::Table::try_from(&defaults)?;
                    merge(&mut merged, table);
                    merged.try_into().with_context(|| format!("optimizer {label:?}: invalid hyperparameters"))?
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
        let back: SplitMnistConfig = c.resolved_table().unwrap().try_into().unwrap();
        assert_eq!(back.named_optimizers().unwrap(), named);
    }

    #[test]
    fn overrides_of_a_named_variant_keep_its_other_defaults() {
        use crate::optim::{Manifold, ObliqueConfig};
        let o = [
            "optimizers=[\"normuon\", \"amsgrad\", \"grassmann\", \"obl\"]",
            "optimizer.normuon.lr=0.01",
            "optimizer.amsgrad.weight_decay=0.1",
            "optimizer.grassmann.dual_steps=5",
            "optimizer.obl.kind=\"oblique\"",
            "optimizer.obl.base={ kind = \"muon\", lr = 0.05 }",
        ];
        let c = SplitMnistConfig::resolve(None, &o.map(String::from)).unwrap();
        let named = c.named_optimizers().unwrap();
        assert!(matches!(&named[0].config, OptimizerConfig::Muon(m) if m.lr == 0.01 && m.neuron_normalization), "{:?}", named[0]);
        assert!(matches!(&named[1].config, OptimizerConfig::Adam(a) if a.amsgrad && a.weight_decay == 0.1), "{:?}", named[1]);
        assert!(
            matches!(&named[2].config, OptimizerConfig::ManifoldMuon(m) if m.manifold == Manifold::Grassmann && m.dual_steps == 5),
            "{:?}",
            named[2]
        );
        let OptimizerConfig::Oblique(ObliqueConfig { base }) = &named[3].config else { panic!("{:?}", named[3]) };
        assert!(matches!(**base, OptimizerConfig::Muon(m) if m.lr == 0.05 && m.momentum == 0.95), "a base of another kind is replaced");
        let back: SplitMnistConfig = c.resolved_table().unwrap().try_into().unwrap();
        assert_eq!(back.named_optimizers().unwrap(), named);
    }

    #[test]
    fn saved_numbers_read_as_typed() {
        let c = SplitMnistConfig::resolve(None, &["optimizers=[\"muon\"]".into(), "optimizer.muon.lr=0.02".into()]).unwrap();
        let text = toml::to_string(&c.resolved_table().unwrap()).unwrap();
        assert!(text.contains("lr = 0.02\n") && !text.contains("0.0199999"), "{text}");
        assert!(text.contains("eps = 1e-8") || text.contains("eps = 0.00000001"), "{text}");
        let back = SplitMnistConfig::resolve(Some(&toml::from_str(&text).unwrap()), &[]).unwrap();
        assert_eq!(back.named_optimizers().unwrap(), c.named_optimizers().unwrap());
    }

    #[test]
    fn every_preset_resolves() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        let presets: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
        assert!(presets.len() >= 4, "{presets:?}");
        for p in presets {
            let preset = read_preset(&p).unwrap();
            // `gpt-*.toml` presets are for `exp gpt`; the others for `exp split-mnist` and `exp vit`.
            let resolved = if p.file_name().unwrap().to_string_lossy().starts_with("gpt-") {
                crate::experiments::gpt::GptStudyConfig::resolve(Some(&preset), &[]).map(drop)
            } else {
                SplitMnistConfig::resolve(Some(&preset), &[]).map(drop)
            };
            resolved.unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
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
