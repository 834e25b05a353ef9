//! Line figures: curves against step, task or a swept value.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use anyhow::Result;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::data::{BySeed, StudyData};
use super::{FONT, colour, err, panels};
use crate::metrics::Interval;

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
/// A curve of a panel: its legend, colour, and values over seeds at each step.
type Curve<'a> = (String, RGBColor, &'a BySeed<f64>);

/// A panel with a caption and labelled axes.
/// Its x values are whole numbers (steps, tasks), `x_ticks` of them labelled.
fn chart<'a, DB: DrawingBackend>(
    panel: &'a DrawingArea<DB, Shift>,
    caption: &str,
    x: Range<f64>,
    x_ticks: usize,
    y: Range<f64>,
) -> Result<Chart<'a, DB>> {
    let mut chart = ChartBuilder::on(panel)
        .caption(caption, (FONT, 18))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart.configure_mesh().x_labels(x_ticks).x_label_formatter(&|v| format!("{v:.0}")).label_style((FONT, 12)).draw().map_err(err)?;
    Ok(chart)
}

/// Task boundaries as dashed vertical lines.
fn boundaries<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>, data: &StudyData, y: Range<f64>) -> Result<()> {
    for &b in &data.boundaries {
        chart
            .draw_series(DashedLineSeries::new([(b as f64, y.start), (b as f64, y.end)], 5, 4, BLACK.mix(0.4).stroke_width(1)))
            .map_err(err)?;
    }
    Ok(())
}

/// The mean over seeds at each x, its 95% interval shaded where every x has
/// several seeds (clipped to `y`), with a legend entry; `marks` puts a dot on
/// every point (for curves of few points).
fn mean_line<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    by_x: &[(f64, Interval)],
    y: &Range<f64>,
    colour: RGBColor,
    label: &str,
    marks: bool,
) -> Result<()> {
    if by_x.iter().all(|(_, i)| i.n > 1) && !by_x.is_empty() {
        let clip = |v: f64| v.clamp(y.start, y.end);
        let upper = by_x.iter().map(|(x, i)| (*x, clip(i.mean + i.half_width)));
        let band: Vec<(f64, f64)> = upper.chain(by_x.iter().rev().map(|(x, i)| (*x, clip(i.mean - i.half_width)))).collect();
        chart.draw_series([Polygon::new(band, colour.mix(0.2).filled())]).map_err(err)?;
    }
    let mean: Vec<(f64, f64)> = by_x.iter().map(|(x, i)| (*x, i.mean)).collect();
    chart
        .draw_series(LineSeries::new(mean.clone(), colour.stroke_width(2)))
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], colour.stroke_width(3)));
    if marks {
        chart.draw_series(mean.into_iter().map(|p| Circle::new(p, 4, colour.filled()))).map_err(err)?;
    }
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>) -> Result<()> {
    chart.configure_series_labels().label_font((FONT, 12)).background_style(WHITE.mix(0.8)).draw().map_err(err)
}

/// Intervals over seeds at each x.
fn intervals<'a>(by_x: impl IntoIterator<Item = (f64, &'a Vec<f64>)>) -> Vec<(f64, Interval)> {
    by_x.into_iter().map(|(x, v)| (x, Interval::of(v))).collect()
}

/// The range of the intervals' means and ends, from 0, with headroom.
fn up_to(lines: &[Vec<(f64, Interval)>]) -> Range<f64> {
    0.0..(spread(lines).end * 1.1).max(1e-9)
}

/// The lowest and highest point of the lines' intervals.
fn spread(lines: &[Vec<(f64, Interval)>]) -> Range<f64> {
    let band = |i: &Interval| if i.n > 1 { i.half_width } else { 0.0 };
    let points = || lines.iter().flatten().map(|(_, i)| i);
    points().map(|i| i.mean - band(i)).fold(f64::MAX, f64::min)..points().map(|i| i.mean + band(i)).fold(0.0, f64::max)
}

pub(super) fn loss<DB: DrawingBackend>(data: &StudyData, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let max_step = data.loss.values().flat_map(|v| v.iter().map(|p| p.0)).max().unwrap_or(1).max(1);
    let losses = data.loss.values().flat_map(|v| v.iter().map(|p| p.1)).filter(|l| l.is_finite() && *l > 0.0);
    let (lo, hi) = losses.fold((f64::MAX, f64::MIN), |(lo, hi), l| (lo.min(l), hi.max(l)));
    // Whole decades: plotters labels a log axis at powers of ten and the points
    // after each, so a range inside one decade (a GPT's loss, 1.3 to 5.6) had none.
    let decade = |v: f64, round: fn(f64) -> f64| 10f64.powf(round(v.log10()));
    let (lo, hi) = if lo > hi { (1e-3, 10.0) } else { (decade(lo, f64::floor), decade(hi * 1.01, f64::ceil)) };
    let caption = if data.boundaries.is_empty() { "training loss" } else { "training loss (task boundaries dashed)" };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 28))
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
    for &b in &data.boundaries {
        chart.draw_series(DashedLineSeries::new([(b, lo), (b, hi)], 6, 4, BLACK.mix(0.4).stroke_width(1))).map_err(err)?;
    }
    let mut labelled = BTreeSet::new();
    for (run, points) in &data.loss {
        let label = super::data::label_of(run);
        let colour = colour(data, label);
        let series = chart
            .draw_series(LineSeries::new(points.iter().filter(|p| p.1.is_finite() && p.1 > 0.0).copied(), colour.mix(0.8).stroke_width(1)))
            .map_err(err)?;
        if labelled.insert(label.to_string()) {
            series.label(label).legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3)));
        }
    }
    chart.configure_series_labels().label_font((FONT, 18)).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)
}

/// Panels of curves against step, one per group; each line is (legend, colour, step → values over seeds).
fn step_panels<DB: DrawingBackend>(data: &StudyData, area: &DrawingArea<DB, Shift>, groups: Vec<(String, Vec<Curve>)>) -> Result<()> {
    for (k, ((title, lines), panel)) in groups.iter().zip(panels(area, groups.len())).enumerate() {
        let curves: Vec<Vec<(f64, Interval)>> = lines.iter().map(|(_, _, by)| intervals(by.iter().map(|(s, v)| (*s as f64, v)))).collect();
        let max_step = lines.iter().flat_map(|(_, _, by)| by.keys()).max().copied().unwrap_or(1).max(1) as f64;
        let y = up_to(&curves);
        let mut chart = chart(&panel, title, 0.0..max_step, 10, y.clone())?;
        boundaries(&mut chart, data, y.clone())?;
        for ((label, colour, _), curve) in lines.iter().zip(&curves) {
            mean_line(&mut chart, curve, &y, *colour, label, false)?;
        }
        // Every panel has the same lines: one legend is enough.
        if k == 0 {
            legend(&mut chart)?;
        }
    }
    Ok(())
}

/// A rank of every weight matrix against step (`ranks`: effective or stable), a panel per matrix.
pub(super) fn rank<DB: DrawingBackend>(
    data: &StudyData,
    ranks: &BTreeMap<(String, String), BySeed<f64>>,
    area: &DrawingArea<DB, Shift>,
) -> Result<()> {
    let mut groups: BTreeMap<String, Vec<Curve>> = BTreeMap::new();
    for ((param, label), by) in ranks {
        groups.entry(param.replace(".weight", "")).or_default().push((label.clone(), colour(data, label), by));
    }
    step_panels(data, area, groups.into_iter().collect())
}

pub(super) fn direction_rank<DB: DrawingBackend>(data: &StudyData, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let kinds: Vec<(&str, &str)> =
        data.directions.keys().map(|(_, l, t)| (l.as_str(), t.as_str())).collect::<BTreeSet<_>>().into_iter().collect();
    let mut groups: BTreeMap<String, Vec<Curve>> = BTreeMap::new();
    for ((param, label, tensor), by) in &data.directions {
        let c = Palette99::pick(kinds.iter().position(|k| *k == (label.as_str(), tensor.as_str())).unwrap_or(0)).to_rgba();
        let name = format!("{label}: {}", tensor.replace("_orthogonalization", "-NS").replace("muon_", ""));
        groups.entry(param.replace(".weight", "")).or_default().push((name, RGBColor(c.0, c.1, c.2), by));
    }
    step_panels(data, area, groups.into_iter().collect())
}

/// How many matrices have a panel (one per distinct name).
pub(super) fn matrices<'a>(names: impl Iterator<Item = &'a String>) -> usize {
    names.collect::<BTreeSet<_>>().len()
}

/// The matrices with spectra at task boundaries, in order.
pub(super) fn spectra_params(data: &StudyData) -> Vec<&String> {
    data.spectra.keys().map(|(p, _)| p).collect::<BTreeSet<_>>().into_iter().collect()
}

pub(super) fn spectra<DB: DrawingBackend>(data: &StudyData, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let params = spectra_params(data);
    let labels: Vec<&String> = data.labels.iter().filter(|l| data.spectra.keys().any(|(_, x)| x == *l)).collect();
    let grid = area.split_evenly((params.len().max(1), labels.len().max(1)));
    for (r, param) in params.iter().enumerate() {
        for (c, label) in labels.iter().enumerate() {
            let Some(stages) = data.spectra.get(&((*param).clone(), (*label).clone())) else { continue };
            // σ_k/σ_1 averaged over seeds, per stage.
            let curves: Vec<((i64, i64), Vec<f64>)> = stages
                .iter()
                .map(|(stage, seeds)| {
                    let n = seeds.iter().map(Vec::len).min().unwrap_or(0);
                    let mean = (0..n).map(|k| seeds.iter().map(|s| s[k] / s[0].max(f64::MIN_POSITIVE)).sum::<f64>() / seeds.len() as f64);
                    (*stage, mean.collect())
                })
                .collect();
            let n = curves.iter().map(|(_, v)| v.len()).max().unwrap_or(1).max(2);
            let lo = curves.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| *v > 0.0).fold(1.0f64, f64::min).max(1e-6);
            let mut chart = ChartBuilder::on(&grid[r * labels.len() + c])
                .caption(format!("{}: {label}", param.replace(".weight", "")), (FONT, 16))
                .margin(6)
                .x_label_area_size(25)
                .y_label_area_size(50)
                .build_cartesian_2d(1.0..n as f64, (lo * 0.8..1.2).log_scale())
                .map_err(err)?;
            chart
                .configure_mesh()
                .light_line_style(TRANSPARENT)
                .label_style((FONT, 11))
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.0e}"))
                .draw()
                .map_err(err)?;
            let tasks = curves.iter().filter(|((s, _), _)| *s > 0).count();
            for (i, ((step, task), values)) in curves.iter().enumerate() {
                let shade = stage_shade(i as f64 / (curves.len() - 1).max(1) as f64);
                let name = match (*step, tasks) {
                    (0, _) => "before training".to_string(),
                    (_, 1) => "end".to_string(),
                    _ => format!("after task {task}"),
                };
                let points = values.iter().enumerate().filter(|(_, v)| **v > 0.0).map(|(k, v)| ((k + 1) as f64, *v));
                chart
                    .draw_series(LineSeries::new(points, shade.stroke_width(2)))
                    .map_err(err)?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], shade.stroke_width(3)));
            }
            chart.configure_series_labels().label_font((FONT, 10)).background_style(WHITE.mix(0.8)).draw().map_err(err)?;
        }
    }
    Ok(())
}

/// Light yellow (before training) to deep purple (the last stage): the two
/// ends of viridis, so the order reads at a glance.
fn stage_shade(t: f64) -> RGBColor {
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t.clamp(0.0, 1.0)) as u8;
    RGBColor(mix(220, 68), mix(200, 1), mix(40, 84))
}

/// Per probed layer (columns), at every evaluation against step: dead units,
/// sparsity (`metrics::sparsity`), and the representations' effective rank
/// where the layer has one (rows).
pub(super) fn sparsity<DB: DrawingBackend>(data: &StudyData, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let layers: Vec<&(i64, String)> = data.sparsity.keys().map(|(l, _)| l).collect::<BTreeSet<_>>().into_iter().collect();
    let grid = area.split_evenly((SPARSITY_ROWS.len(), layers.len().max(1)));
    let max_step = data.sparsity.values().flat_map(|by| by.keys()).max().copied().unwrap_or(1).max(1) as f64;
    for (index, what) in SPARSITY_ROWS.into_iter().enumerate() {
        for (c, layer) in layers.iter().enumerate() {
            let lines: Vec<(&String, Vec<(f64, Interval)>)> = data
                .sparsity
                .iter()
                .filter(|((l, _), _)| l == *layer)
                .map(|((_, label), by)| {
                    let finite = |seeds: &Vec<[f64; 3]>| seeds.iter().map(|m| m[index]).filter(|v| v.is_finite()).collect::<Vec<f64>>();
                    let by_step = by.iter().map(|(s, seeds)| (*s as f64, finite(seeds))).filter(|(_, v)| !v.is_empty());
                    (label, by_step.map(|(s, v)| (s, Interval::of(&v))).collect())
                })
                .collect();
            // Token-level layers have no effective rank: their panel stays blank.
            if lines.iter().all(|(_, l)| l.is_empty()) {
                continue;
            }
            let y = if index == 2 { up_to(&lines.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>()) } else { 0.0..1.0 };
            let title = format!("{}: {what}", layer.1);
            // Room past the last evaluation, the end of the run, so its dot is not on the frame.
            let mut chart = chart(&grid[index * layers.len() + c], &title, 0.0..max_step * 1.04, 5, y.clone())?;
            boundaries(&mut chart, data, y.clone())?;
            for (label, curve) in lines.iter().filter(|(_, l)| !l.is_empty()) {
                mean_line(&mut chart, curve, &y, colour(data, label), label, true)?;
            }
            legend(&mut chart)?;
        }
    }
    Ok(())
}

/// Rows of the sparsity figure, in the order `StudyData::sparsity` holds them.
pub(super) const SPARSITY_ROWS: [&str; 3] = ["dead units", "sparsity", "effective rank"];

/// A sweep's tuning curves: per optimizer, a final metric over the tuning
/// seeds against the one value its cells sweep (e.g. `lr`).
pub struct TuningCurves {
    pub axis: String,
    pub metric: String,
    /// Swept on a log scale (every value > 0, spanning a factor of 10 or more).
    pub log_x: bool,
    /// optimizer → (value, the metric over the tuning seeds), by value.
    pub lines: BTreeMap<String, Vec<(f64, Interval)>>,
}

impl TuningCurves {
    /// One panel; `size` is its caption's font size.
    pub(super) fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, size: u32) -> Result<()> {
        let x = |v: f64| if self.log_x { v.log10() } else { v };
        let curves: Vec<Vec<(f64, Interval)>> = self.lines.values().map(|l| l.iter().map(|(v, i)| (x(*v), *i)).collect()).collect();
        let xs = curves.iter().flatten().map(|p| p.0);
        let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let pad = ((hi - lo) * 0.05).max(1e-3);
        // The metric's own range: the optima of tuned rates differ by tenths of a point.
        let Range { start: bottom, end: top } = spread(&curves);
        let margin = ((top - bottom) * 0.05).max(1e-3);
        let y = bottom - margin..top + margin;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{} against {}", self.metric, self.axis), (FONT, size))
            .margin(size / 2)
            .x_label_area_size(size * 2)
            .y_label_area_size(size * 3)
            .build_cartesian_2d(lo - pad..hi + pad, y.clone())
            .map_err(err)?;
        let log_x = self.log_x;
        chart
            .configure_mesh()
            .x_desc(self.axis.as_str())
            .y_desc(self.metric.as_str())
            .x_label_formatter(&|v| if log_x { format!("{:.0e}", 10f64.powf(*v)) } else { format!("{v}") })
            .label_style((FONT, size * 2 / 3))
            .draw()
            .map_err(err)?;
        for (i, (label, curve)) in self.lines.keys().zip(&curves).enumerate() {
            let c = Palette99::pick(i).to_rgba();
            mean_line(&mut chart, curve, &y, RGBColor(c.0, c.1, c.2), label, true)?;
        }
        legend(&mut chart)
    }
}
