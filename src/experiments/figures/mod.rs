//! Figures of a study, drawn from its Parquet tables (so `exp plot` works on any
//! study folder, finished or not), each as PNG and SVG. Text uses the bundled
//! DejaVu Sans (`assets/`), so no system font library is needed. Lines are
//! means over seeds with a shaded 95% interval (Student t) where there are
//! several seeds.
//!
//! - `lines`: the loss, effective and stable ranks, the ranks of what moved each matrix
//!   (Muon before and after Newton-Schulz), singular-value spectra at task
//!   boundaries, dead units and sparsity, and a sweep's tuning curves (its
//!   metric, and its representations, against the swept value);
//! - `maps`: heatmaps of the accuracy matrix, class-mean cosines and
//!   covariances.

mod data;
mod lines;
mod maps;

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use data::StudyData;
pub use lines::TuningCurves;

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1200;

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("../../../assets/DejaVuSans.ttf"))
            .map_err(|_| anyhow!("the bundled font assets/DejaVuSans.ttf does not load"));
    });
    result
}

/// A figure as written: its name, what it shows, and its files.
pub struct Figure {
    pub name: &'static str,
    pub caption: &'static str,
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// Writes every figure of the study in `dir` into `dir/figures/`.
pub fn plot_study(dir: &Path) -> Result<Vec<Figure>> {
    plot(&[dir.to_path_buf()], &dir.join("figures"))
}

/// Writes the figures of studies drawn together (their runs side by side, e.g.
/// a sweep's reruns, one folder per optimizer) into `out`.
pub fn plot(dirs: &[PathBuf], out: &Path) -> Result<Vec<Figure>> {
    register_font()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let data = StudyData::read(dirs)?;
    let mut figures = Vec::new();
    for kind in Kind::ALL {
        if let Some(height) = kind.height(&data) {
            figures.push(write(out, kind.name(), kind.caption(), height, |a| kind.draw(&data, a), |a| kind.draw(&data, a))?);
        }
    }
    Ok(figures)
}

/// A sweep's tuning curves (see [`TuningCurves`]) as `out/tuning.png` and `.svg`.
pub fn plot_tuning(out: &Path, curves: &TuningCurves) -> Result<Figure> {
    let caption = "each optimizer's final metric against the swept value, mean over the tuning seeds with 95% intervals";
    write_panels(out, "tuning", caption, 700, std::slice::from_ref(curves), 1, 24)
}

/// What the swept value did to a sweep's representations: each probed layer's
/// effective rank and sparsity after training against it (one row of two
/// panels per layer), as `out/tuning_representations.png` and `.svg`.
pub fn plot_tuning_representations(out: &Path, panels: &[TuningCurves]) -> Result<Figure> {
    let caption = "each probed layer's representations after training against the swept value: their effective rank (left) \
                   and the fraction of activations that are off (right; exact zeros after ReLU, |a| < 0.01 after GELU), mean \
                   over the tuning seeds with 95% intervals; shows how much of a difference between optimizers their rates make";
    write_panels(out, "tuning_representations", caption, rows_height(panels.len().div_ceil(2), 350), panels, 2, 18)
}

/// `panels` in rows of `columns`, captions in font `size`.
fn write_panels(
    out: &Path,
    name: &'static str,
    caption: &'static str,
    height: u32,
    panels: &[TuningCurves],
    columns: usize,
    size: u32,
) -> Result<Figure> {
    register_font()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    fn draw<DB: DrawingBackend>(area: DrawingArea<DB, Shift>, panels: &[TuningCurves], columns: usize, size: u32) -> Result<()> {
        area.fill(&WHITE).map_err(err)?;
        for (curves, panel) in panels.iter().zip(area.split_evenly((panels.len().div_ceil(columns), columns))) {
            curves.draw(&panel, size)?;
        }
        area.present().map_err(err)
    }
    write(out, name, caption, height, |a| draw(a, panels, columns, size), |a| draw(a, panels, columns, size))
}

/// The kinds of figure of a study.
#[derive(Clone, Copy)]
enum Kind {
    Loss,
    EffectiveRank,
    StableRank,
    DirectionRank,
    Spectra,
    Sparsity,
    AccuracyMatrix,
    ClassCosine,
    Covariance,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::Loss,
        Kind::EffectiveRank,
        Kind::StableRank,
        Kind::DirectionRank,
        Kind::Spectra,
        Kind::Sparsity,
        Kind::AccuracyMatrix,
        Kind::ClassCosine,
        Kind::Covariance,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Loss => "loss",
            Kind::EffectiveRank => "effective_rank",
            Kind::StableRank => "stable_rank",
            Kind::DirectionRank => "direction_rank",
            Kind::Spectra => "spectra",
            Kind::Sparsity => "sparsity",
            Kind::AccuracyMatrix => "accuracy_matrix",
            Kind::ClassCosine => "class_cosine",
            Kind::Covariance => "covariance",
        }
    }

    fn caption(self) -> &'static str {
        match self {
            Kind::Loss => "every run's training loss against step (log scale), task boundaries (where the study has tasks) dashed",
            Kind::EffectiveRank => "each weight matrix's effective rank against step: mean over seeds per optimizer, shaded 95% interval",
            Kind::StableRank => {
                "each weight matrix's stable rank ‖W‖_F²/‖W‖₂² against step: mean over seeds per optimizer, shaded 95% interval"
            }
            Kind::DirectionRank => {
                "effective rank of what moved each matrix (the gradient, the applied update, Muon's direction before and after \
                 Newton-Schulz…) against step, mean over seeds"
            }
            Kind::Spectra => {
                "singular values of each weight matrix (σ_k/σ_1, log scale) before training and at the end of each task, one \
                 panel per matrix and optimizer, mean over seeds"
            }
            Kind::Sparsity => {
                "the test sets' representations at every evaluation (each task's end; each epoch's with \
                 `representations_every_epoch`) against step, per probed layer: the fraction of dead units (0 on every test \
                 example; top), the fraction of activations that are off (exact zeros where the layer has any, as after ReLU; else \
                 |a| < 0.01, as for GELU; middle), and their effective rank (bottom; per-example layers), mean over seeds with 95% \
                 intervals"
            }
            Kind::AccuracyMatrix => {
                "R[i][j], test accuracy on task j (column) after training task i (row, first at the top), mean over seeds, a panel per optimizer"
            }
            Kind::ClassCosine => {
                "cosine similarity of the class-mean representations after the last task, per probed layer (rows) and \
                 optimizer (columns), mean over seeds; white 0 to blue 1, or red 1 and blue −1 where any is negative"
            }
            Kind::Covariance => {
                "|covariance| of each probed layer's units after the last task (lowest seed: units of different seeds do not \
                 correspond), units sorted by variance, averaged over blocks to at most 64×64; shade √(value / largest)"
            }
        }
    }

    /// The figure's height for this study, or None when it has nothing to show.
    fn height(self, data: &StudyData) -> Option<u32> {
        let some = |empty: bool, rows: usize, per_row: u32| (!empty).then(|| rows_height(rows, per_row));
        match self {
            Kind::Loss => Some(800),
            Kind::EffectiveRank => some(data.ranks.is_empty(), grid(lines::matrices(data.ranks.keys().map(|k| &k.0))).0, 300),
            Kind::StableRank => some(data.stable_ranks.is_empty(), grid(lines::matrices(data.stable_ranks.keys().map(|k| &k.0))).0, 300),
            Kind::DirectionRank => some(data.directions.is_empty(), grid(lines::matrices(data.directions.keys().map(|k| &k.0))).0, 300),
            Kind::Spectra => some(data.spectra.is_empty(), lines::spectra_params(data).len(), 280),
            Kind::Sparsity => some(data.sparsity.is_empty(), lines::SPARSITY_ROWS.len(), 350),
            Kind::AccuracyMatrix => some(data.accuracy.is_empty(), 1, 800),
            Kind::ClassCosine => some(data.cosine.is_empty(), maps::layers(data.cosine.keys()).len(), 320),
            Kind::Covariance => some(data.covariance.is_empty(), maps::layers(data.covariance.keys()).len(), 320),
        }
    }

    fn draw<DB: DrawingBackend>(self, data: &StudyData, area: DrawingArea<DB, Shift>) -> Result<()> {
        area.fill(&WHITE).map_err(err)?;
        match self {
            Kind::Loss => lines::loss(data, &area)?,
            Kind::EffectiveRank => lines::rank(data, &data.ranks, &area)?,
            Kind::StableRank => lines::rank(data, &data.stable_ranks, &area)?,
            Kind::DirectionRank => lines::direction_rank(data, &area)?,
            Kind::Spectra => lines::spectra(data, &area)?,
            Kind::Sparsity => lines::sparsity(data, &area)?,
            Kind::AccuracyMatrix => maps::accuracy_matrix(data, &area)?,
            Kind::ClassCosine => maps::class_cosine(data, &area)?,
            Kind::Covariance => maps::covariance(data, &area)?,
        }
        area.present().map_err(err)
    }
}

fn write(
    out: &Path,
    name: &'static str,
    caption: &'static str,
    height: u32,
    bitmap: impl FnOnce(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
    svg: impl FnOnce(DrawingArea<SVGBackend, Shift>) -> Result<()>,
) -> Result<Figure> {
    let (png, svg_path) = (out.join(format!("{name}.png")), out.join(format!("{name}.svg")));
    bitmap(BitMapBackend::new(&png, (WIDTH, height)).into_drawing_area()).with_context(|| format!("drawing {name}"))?;
    svg(SVGBackend::new(&svg_path, (WIDTH, height)).into_drawing_area()).with_context(|| format!("drawing {name}"))?;
    Ok(Figure { name, caption, png, svg: svg_path })
}

/// Any plotters error as an error value.
fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("{e:?}")
}

/// Colour of an optimizer label: its place among the study's labels.
fn colour(data: &StudyData, label: &str) -> RGBColor {
    let i = data.labels.iter().position(|l| l == label).unwrap_or(data.labels.len());
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// The (rows, columns) of a near-square grid of `n` panels.
fn grid(n: usize) -> (usize, usize) {
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    (n.div_ceil(cols).max(1), cols)
}

/// `n` panels in a near-square grid.
fn panels<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, n: usize) -> Vec<DrawingArea<DB, Shift>> {
    area.split_evenly(grid(n))
}

/// The height of a figure of `rows` rows of panels.
fn rows_height(rows: usize, per_row: u32) -> u32 {
    (rows as u32 * per_row).max(500)
}
