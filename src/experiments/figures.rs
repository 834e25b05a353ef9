//! Figures of a study, drawn from its Parquet tables (so `exp plot` works on any
//! study folder, finished or not), each as PNG and SVG. Text uses the bundled
//! DejaVu Sans (`assets/`), so no system font library is needed.
//!
//! - `loss`: every run's training loss against step (log scale), task
//!   boundaries dashed;
//! - `effective_rank`: each weight matrix's effective rank against step, one
//!   panel per matrix, one line per optimizer (mean over seeds);
//! - `accuracy_matrix`: R[i][j] (test accuracy on task j after task i) per
//!   optimizer, averaged over seeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::record::{read_table, schema};

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1200, 800);

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("../../assets/DejaVuSans.ttf"))
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
    let mut both = |name: &'static str,
                    caption: &'static str,
                    draw: &dyn Fn(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
                    svg: &dyn Fn(DrawingArea<SVGBackend, Shift>) -> Result<()>|
     -> Result<()> {
        let (png, svg_path) = (out.join(format!("{name}.png")), out.join(format!("{name}.svg")));
        draw(BitMapBackend::new(&png, SIZE).into_drawing_area())?;
        svg(SVGBackend::new(&svg_path, SIZE).into_drawing_area())?;
        figures.push(Figure { name, caption, png, svg: svg_path });
        Ok(())
    };
    both("loss", "every run's training loss against step (log scale), task boundaries dashed", &|a| data.loss(a), &|a| data.loss(a))?;
    if !data.ranks.is_empty() {
        both(
            "effective_rank",
            "each weight matrix's effective rank against step: mean over seeds per optimizer, shaded 95% interval",
            &|a| data.effective_rank(a),
            &|a| data.effective_rank(a),
        )?;
    }
    if !data.accuracy.is_empty() {
        both(
            "accuracy_matrix",
            "R[i][j], test accuracy on task j after training task i, mean over seeds, per optimizer",
            &|a| data.accuracy_matrix(a),
            &|a| data.accuracy_matrix(a),
        )?;
    }
    Ok(figures)
}

/// The optimizer label of a run id `<label>-s<seed>`.
fn label_of(run: &str) -> &str {
    run.rsplit_once("-s").map_or(run, |(label, _)| label)
}

struct StudyData {
    /// Per run: (step, loss).
    loss: BTreeMap<String, Vec<(i64, f64)>>,
    /// Steps at which a new task begins.
    boundaries: Vec<i64>,
    /// (param, label) → step → effective ranks of the seeds.
    ranks: BTreeMap<(String, String), BTreeMap<i64, Vec<f64>>>,
    /// label → (after, eval) → accuracies of the seeds.
    accuracy: BTreeMap<String, BTreeMap<(i64, i64), Vec<f64>>>,
}

impl StudyData {
    /// The runs of every folder in `dirs`, together.
    fn read(dirs: &[PathBuf]) -> Result<Self> {
        let mut data = Self { loss: BTreeMap::new(), boundaries: Vec::new(), ranks: BTreeMap::new(), accuracy: BTreeMap::new() };
        for dir in dirs {
            data.add(dir).with_context(|| format!("reading the tables of {}", dir.display()))?;
        }
        Ok(data)
    }

    fn add(&mut self, dir: &Path) -> Result<()> {
        let steps = read_table(dir, &schema::STEPS)?;
        let col_s = |df: &polars::prelude::DataFrame, c: &str| -> Result<Vec<String>> {
            Ok(df.column(c)?.str()?.iter().map(|s| s.unwrap_or_default().to_string()).collect())
        };
        let col_i = |df: &polars::prelude::DataFrame, c: &str| -> Result<Vec<Option<i64>>> { Ok(df.column(c)?.i64()?.iter().collect()) };
        let col_f = |df: &polars::prelude::DataFrame, c: &str| -> Result<Vec<Option<f64>>> { Ok(df.column(c)?.f64()?.iter().collect()) };
        let (run, step, task, loss) = (col_s(&steps, "run")?, col_i(&steps, "step")?, col_i(&steps, "task")?, col_f(&steps, "loss")?);
        let by_run = &mut self.loss;
        let mut first_step_of_task: BTreeMap<i64, i64> = BTreeMap::new();
        for k in 0..run.len() {
            if let (Some(s), Some(t), Some(l)) = (step[k], task[k], loss[k]) {
                by_run.entry(run[k].clone()).or_default().push((s, l));
                let e = first_step_of_task.entry(t).or_insert(s);
                *e = (*e).min(s);
            }
        }
        by_run.values_mut().for_each(|v| v.sort_by_key(|p| p.0));
        // Studies drawn together share their protocol, so their boundaries agree.
        self.boundaries = first_step_of_task.into_iter().filter(|(t, _)| *t > 0).map(|(_, s)| s - 1).collect();

        let ranks = &mut self.ranks;
        if let Ok(sp) = read_table(dir, &schema::SPECTRA) {
            let (run, step, param, tensor, er) =
                (col_s(&sp, "run")?, col_i(&sp, "step")?, col_s(&sp, "param")?, col_s(&sp, "tensor")?, col_f(&sp, "effective_rank")?);
            for k in (0..run.len()).filter(|&k| tensor[k] == "weight") {
                if let (Some(s), Some(r)) = (step[k], er[k]) {
                    ranks.entry((param[k].clone(), label_of(&run[k]).to_string())).or_default().entry(s).or_default().push(r);
                }
            }
        }
        let accuracy = &mut self.accuracy;
        if let Ok(acc) = read_table(dir, &schema::ACCURACY) {
            let (run, after, eval, a) =
                (col_s(&acc, "run")?, col_i(&acc, "after_task")?, col_i(&acc, "eval_task")?, col_f(&acc, "accuracy")?);
            // Folders written before the column existed hold test rows only.
            let split = if acc.column("split").is_ok() { col_s(&acc, "split")? } else { vec!["test".into(); acc.height()] };
            for k in (0..run.len()).filter(|&k| split[k] == "test") {
                if let (Some(i), Some(j), Some(v)) = (after[k], eval[k], a[k]) {
                    accuracy.entry(label_of(&run[k]).to_string()).or_default().entry((i, j)).or_default().push(v);
                }
            }
        }
        Ok(())
    }

    /// Colour of an optimizer label: its place among the study's labels.
    fn colour(&self, label: &str) -> RGBColor {
        let labels: Vec<&str> = {
            let mut l: Vec<&str> = self.loss.keys().map(|r| label_of(r)).collect();
            l.dedup();
            l
        };
        let i = labels.iter().position(|l| *l == label).unwrap_or(0);
        let c = Palette99::pick(i).to_rgba();
        RGBColor(c.0, c.1, c.2)
    }

    fn loss<DB: DrawingBackend>(&self, area: DrawingArea<DB, Shift>) -> Result<()> {
        let err = |e| anyhow!("drawing the loss figure: {e:?}");
        area.fill(&WHITE).map_err(err)?;
        let max_step = self.loss.values().flat_map(|v| v.iter().map(|p| p.0)).max().unwrap_or(1).max(1);
        let losses = self.loss.values().flat_map(|v| v.iter().map(|p| p.1)).filter(|l| l.is_finite() && *l > 0.0);
        let (lo, hi) = losses.fold((f64::MAX, f64::MIN), |(lo, hi), l| (lo.min(l), hi.max(l)));
        let (lo, hi) = if lo > hi { (1e-3, 10.0) } else { (lo * 0.8, hi * 1.2) };
        let mut chart = ChartBuilder::on(&area)
            .caption("training loss (task boundaries dashed)", (FONT, 28))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0i64..max_step, (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .label_style((FONT, 18))
            .draw()
            .map_err(err)?;
        for &b in &self.boundaries {
            chart.draw_series(DashedLineSeries::new([(b, lo), (b, hi)], 6, 4, BLACK.mix(0.4).stroke_width(1))).map_err(err)?;
        }
        let mut labelled = std::collections::BTreeSet::new();
        for (run, points) in &self.loss {
            let label = label_of(run);
            let colour = self.colour(label);
            let series = chart
                .draw_series(LineSeries::new(
                    points.iter().filter(|p| p.1.is_finite() && p.1 > 0.0).copied(),
                    colour.mix(0.8).stroke_width(1),
                ))
                .map_err(err)?;
            if labelled.insert(label.to_string()) {
                series.label(label).legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3)));
            }
        }
        chart.configure_series_labels().label_font((FONT, 18)).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
        area.present().map_err(err)
    }

    fn effective_rank<DB: DrawingBackend>(&self, area: DrawingArea<DB, Shift>) -> Result<()> {
        let err = |e| anyhow!("drawing the effective-rank figure: {e:?}");
        area.fill(&WHITE).map_err(err)?;
        let params: Vec<&String> = {
            let mut p: Vec<&String> = self.ranks.keys().map(|(p, _)| p).collect();
            p.dedup();
            p
        };
        let cols = (params.len() as f64).sqrt().ceil() as usize;
        let rows = params.len().div_ceil(cols.max(1));
        let panels = area.split_evenly((rows.max(1), cols.max(1)));
        for (param, panel) in params.iter().zip(&panels) {
            let lines: Vec<(&String, &BTreeMap<i64, Vec<f64>>)> =
                self.ranks.iter().filter(|((p, _), _)| p == *param).map(|((_, l), v)| (l, v)).collect();
            let max_step = lines.iter().flat_map(|(_, v)| v.keys()).max().copied().unwrap_or(1).max(1);
            let max_rank = lines.iter().flat_map(|(_, v)| v.values().flatten()).fold(1.0f64, |m, &r| m.max(r)) * 1.1;
            let mut chart = ChartBuilder::on(panel)
                .caption(param.replace(".weight", ""), (FONT, 18))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(45)
                .build_cartesian_2d(0i64..max_step, 0.0..max_rank)
                .map_err(err)?;
            chart.configure_mesh().label_style((FONT, 12)).draw().map_err(err)?;
            for &b in &self.boundaries {
                chart.draw_series(DashedLineSeries::new([(b, 0.0), (b, max_rank)], 5, 4, BLACK.mix(0.4).stroke_width(1))).map_err(err)?;
            }
            for (label, by_step) in lines {
                let colour = self.colour(label);
                let intervals: Vec<(i64, crate::metrics::Interval)> =
                    by_step.iter().map(|(s, rs)| (*s, crate::metrics::Interval::of(rs))).collect();
                if intervals.iter().all(|(_, i)| i.n > 1) {
                    let upper = intervals.iter().map(|(s, i)| (*s, (i.mean + i.half_width).min(max_rank)));
                    let band: Vec<(i64, f64)> =
                        upper.chain(intervals.iter().rev().map(|(s, i)| (*s, (i.mean - i.half_width).max(0.0)))).collect();
                    chart.draw_series([Polygon::new(band, colour.mix(0.2).filled())]).map_err(err)?;
                }
                let mean = intervals.iter().map(|(s, i)| (*s, i.mean));
                chart
                    .draw_series(LineSeries::new(mean, colour.stroke_width(2)))
                    .map_err(err)?
                    .label(label.as_str())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], colour.stroke_width(3)));
            }
            chart.configure_series_labels().label_font((FONT, 12)).background_style(WHITE.mix(0.8)).draw().map_err(err)?;
        }
        area.present().map_err(err)
    }

    fn accuracy_matrix<DB: DrawingBackend>(&self, area: DrawingArea<DB, Shift>) -> Result<()> {
        let err = |e| anyhow!("drawing the accuracy-matrix figure: {e:?}");
        area.fill(&WHITE).map_err(err)?;
        let panels = area.split_evenly((1, self.accuracy.len().max(1)));
        for ((label, cells), panel) in self.accuracy.iter().zip(&panels) {
            let t = cells.keys().map(|(i, j)| i.max(j) + 1).max().unwrap_or(1);
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{label}: R[after i][task j]"), (FONT, 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(30)
                .build_cartesian_2d(0.0..t as f64, 0.0..t as f64)
                .map_err(err)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc("task j")
                .y_desc("after task i (top: first)")
                .x_labels((t + 1) as usize)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|_| String::new())
                .label_style((FONT, 12))
                .draw()
                .map_err(err)?;
            for (&(i, j), values) in cells {
                let a = values.iter().sum::<f64>() / values.len() as f64;
                let fade = |full: f64| (255.0 - a.clamp(0.0, 1.0) * full) as u8;
                let (x, y) = (j as f64, (t - 1 - i) as f64);
                chart
                    .draw_series([Rectangle::new([(x, y), (x + 1.0, y + 1.0)], RGBColor(fade(220.0), fade(150.0), 255).filled())])
                    .map_err(err)?;
                let ink = if a > 0.6 { WHITE } else { BLACK };
                chart.draw_series([Text::new(format!("{a:.2}"), (x + 0.25, y + 0.6), (FONT, 14).into_font().color(&ink))]).map_err(err)?;
            }
        }
        area.present().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_ids_give_their_label() {
        assert_eq!(super::label_of("muon-all-s12"), "muon-all");
        assert_eq!(super::label_of("sgd-s0"), "sgd");
    }
}
