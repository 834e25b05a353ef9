//! Heatmaps: the accuracy matrix, class-mean cosines, covariances.

use std::collections::BTreeSet;

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::data::{Cosines, Covariance, Layer, StudyData};
use super::{FONT, err};

/// The probed layers of a map's keys, in model order.
pub(super) fn layers<'a>(keys: impl Iterator<Item = &'a (Layer, String)>) -> Vec<&'a Layer> {
    keys.map(|(l, _)| l).collect::<BTreeSet<_>>().into_iter().collect()
}

/// An n×m grid of cells, row 0 at the top; `value` is None for an empty cell.
fn heatmap<DB: DrawingBackend>(
    panel: &DrawingArea<DB, Shift>,
    caption: &str,
    (rows, cols): (usize, usize),
    value: &dyn Fn(usize, usize) -> Option<f64>,
    shade: &dyn Fn(f64) -> RGBColor,
    numbers: bool,
) -> Result<()> {
    let mut chart = ChartBuilder::on(panel)
        .caption(caption, (FONT, 16))
        .margin(8)
        .x_label_area_size(25)
        .y_label_area_size(25)
        .build_cartesian_2d(0.0..cols as f64, 0.0..rows as f64)
        .map_err(err)?;
    let step = |n: usize| n.div_ceil(10).max(1);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(cols.min(10) + 1)
        .y_labels(rows.min(10) + 1)
        .x_label_formatter(&|v| if (*v as usize).is_multiple_of(step(cols)) { format!("{v:.0}") } else { String::new() })
        .y_label_formatter(&|v| {
            if *v >= 1.0 && (*v as usize).is_multiple_of(step(rows)) { format!("{:.0}", rows as f64 - v) } else { String::new() }
        })
        .label_style((FONT, 11))
        .draw()
        .map_err(err)?;
    for r in 0..rows {
        for c in 0..cols {
            let Some(v) = value(r, c).filter(|v| v.is_finite()) else { continue };
            let (x, y) = (c as f64, (rows - 1 - r) as f64);
            chart.draw_series([Rectangle::new([(x, y), (x + 1.0, y + 1.0)], shade(v).filled())]).map_err(err)?;
            if numbers {
                let ink = if v > 0.6 { WHITE } else { BLACK };
                chart.draw_series([Text::new(format!("{v:.2}"), (x + 0.25, y + 0.6), (FONT, 14).into_font().color(&ink))]).map_err(err)?;
            }
        }
    }
    Ok(())
}

/// White at 0 to deep blue at 1.
fn sequential(v: f64) -> RGBColor {
    let fade = |full: f64| (255.0 - v.clamp(0.0, 1.0) * full) as u8;
    RGBColor(fade(220.0), fade(150.0), 255)
}

/// Blue at −1, white at 0, red at 1.
fn diverging(v: f64) -> RGBColor {
    let t = v.clamp(-1.0, 1.0);
    let fade = |a: f64| (255.0 - a * 200.0) as u8;
    if t >= 0.0 { RGBColor(255, fade(t), fade(t)) } else { RGBColor(fade(-t), fade(-t), 255) }
}

pub(super) fn accuracy_matrix<DB: DrawingBackend>(data: &StudyData, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let matrices: Vec<(&String, _)> = data.labels.iter().filter_map(|l| Some((l, data.accuracy.get(l)?))).collect();
    let panels = area.split_evenly((1, matrices.len().max(1)));
    for ((label, cells), panel) in matrices.into_iter().zip(&panels) {
        let t = cells.keys().map(|(i, j)| i.max(j) + 1).max().unwrap_or(1) as usize;
        let value = |i: usize, j: usize| cells.get(&(i as i64, j as i64)).map(|v| v.iter().sum::<f64>() / v.len() as f64);
        heatmap(panel, label, (t, t), &value, &sequential, true)?;
    }
    Ok(())
}

pub(super) fn class_cosine<DB: DrawingBackend>(data: &StudyData, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let layers = layers(data.cosine.keys());
    let grid = area.split_evenly((layers.len().max(1), data.labels.len().max(1)));
    for (r, layer) in layers.iter().enumerate() {
        for (c, label) in data.labels.iter().enumerate() {
            let Some(Cosines { after, seeds, .. }) = data.cosine.get(&((*layer).clone(), label.clone())) else { continue };
            let n = (seeds[0].len() as f64).sqrt() as usize;
            let value = |i: usize, j: usize| Some(seeds.iter().map(|s| s[i * n + j]).sum::<f64>() / seeds.len() as f64);
            // ReLU layers' class means never point apart: a 0..1 scale shows them better.
            let signed = seeds.iter().flatten().any(|v| *v < 0.0);
            let shade: &dyn Fn(f64) -> RGBColor = if signed { &diverging } else { &sequential };
            heatmap(&grid[r * data.labels.len() + c], &format!("{} after task {after}: {label}", layer.1), (n, n), &value, shade, false)?;
        }
    }
    Ok(())
}

/// At most this many blocks of units per side of a covariance map.
const BLOCKS: usize = 64;

pub(super) fn covariance<DB: DrawingBackend>(data: &StudyData, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let layers = layers(data.covariance.keys());
    let grid = area.split_evenly((layers.len().max(1), data.labels.len().max(1)));
    for (r, layer) in layers.iter().enumerate() {
        for (c, label) in data.labels.iter().enumerate() {
            let Some(Covariance { after, seed, width: w, values: cov, .. }) = data.covariance.get(&((*layer).clone(), label.clone()))
            else {
                continue;
            };
            let w = *w;
            let mut order: Vec<usize> = (0..w).collect();
            order.sort_by(|&a, &b| cov[b * w + b].total_cmp(&cov[a * w + a]));
            let n = w.min(BLOCKS);
            let block = |i: usize| order[i * w / n..(i + 1) * w / n].to_vec();
            let blocks: Vec<Vec<usize>> = (0..n).map(block).collect();
            let mean_abs = |a: &[usize], b: &[usize]| {
                a.iter().flat_map(|&i| b.iter().map(move |&j| cov[i * w + j].abs())).sum::<f64>() / (a.len() * b.len()) as f64
            };
            let cells: Vec<f64> = (0..n * n).map(|k| mean_abs(&blocks[k / n], &blocks[k % n])).collect();
            let top = cells.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
            let value = |i: usize, j: usize| Some((cells[i * n + j] / top).sqrt());
            let caption = format!("{} after task {after}: {label}, seed {seed}", layer.1);
            heatmap(&grid[r * data.labels.len() + c], &caption, (n, n), &value, &sequential, false)?;
        }
    }
    Ok(())
}
