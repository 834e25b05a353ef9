//! `exp report DIR`: a study's or a sweep's report as one self-contained HTML
//! file (figures inlined as PNG data URIs: it can be mailed or archived alone)
//! and a Markdown twin that links the figures under `figures/`. Both are
//! rendered from one list of sections, so they say the same things: the
//! tables with their intervals, the figures, the configuration and the
//! provenance.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine as _;

use super::figures::{self, Figure};
use super::folder::write_atomically;
use super::{summary, sweep};

/// One part of a report.
enum Part {
    Heading(String),
    /// Plain text shown as is (tables, TOML).
    Text(String),
    Figure(Figure),
    /// A sentence.
    Note(String),
}

/// The files a report was written to, and its main table.
pub struct Written {
    pub html: PathBuf,
    pub markdown: PathBuf,
    pub table: String,
}

/// Writes `DIR/report.html` and `DIR/report.md` for a study or a sweep folder,
/// finished or not (figures of a study with no steps yet are left out, saying why).
pub fn write(dir: &Path) -> Result<Written> {
    let (title, table, parts) = if sweep::is_sweep(dir) { sweep_parts(dir)? } else { study_parts(dir)? };
    let html = dir.join("report.html");
    let markdown = dir.join("report.md");
    write_atomically(&html, &render_html(&title, &parts, dir)?)?;
    write_atomically(&markdown, &render_markdown(&title, &parts, dir))?;
    Ok(Written { html, markdown, table })
}

fn study_parts(dir: &Path) -> Result<(String, String, Vec<Part>)> {
    let (kind, _) = super::folder::saved_config(dir)?;
    let table = summary::report(dir)?;
    let mut parts = vec![Part::Heading("Results".into()), Part::Text(table.clone())];
    figure_parts(&mut parts, None, figures::plot_study(dir).map(|figures| vec![(None, figures)]));
    parts.push(Part::Heading("Configuration (config.toml)".into()));
    parts.push(Part::Text(read(&dir.join("config.toml"))?));
    provenance_parts(&mut parts, dir, &name_of(dir))?;
    Ok((format!("optlab {kind} study: {}", name_of(dir)), table, parts))
}

fn sweep_parts(root: &Path) -> Result<(String, String, Vec<Part>)> {
    let (spec, state) = sweep::state(root)?;
    let table = sweep::render(&spec, &state, root)?;
    let mut parts = vec![Part::Heading("Results".into()), Part::Text(table.clone())];
    let finals = sweep::finished_reruns(root, &state);
    let note = "The grid's tuning curves (when each optimizer sweeps one value: the selection's metric, and the representations' \
                rank and sparsity, against it), then the reruns of the chosen cells with the fresh seeds, \
                or (a grid without selection over shared axes) the optimizers' cells at each point of those axes.";
    figure_parts(&mut parts, Some(note), sweep::plot(root, &spec, &state));
    if root.join("selection.toml").exists() {
        parts.push(Part::Heading("Selection (selection.toml)".into()));
        parts.push(Part::Text(read(&root.join("selection.toml"))?));
    }
    parts.push(Part::Heading("Specification (sweep.toml)".into()));
    parts.push(Part::Text(read(&root.join(sweep::SPEC))?));
    for dir in &finals {
        // By path: reruns chosen per point share their optimizer's name.
        let name = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
        provenance_parts(&mut parts, dir, &name)?;
    }
    parts.push(Part::Note("Every cell's study folder under cells/ keeps its own config.toml and provenance/.".into()));
    Ok((format!("optlab {} sweep: {}", spec.study, name_of(root)), table, parts))
}

/// The figures, in groups: a group with a point (of a sweep's shared axes)
/// gets its own heading.
fn figure_parts(parts: &mut Vec<Part>, note: Option<&str>, groups: Result<Vec<(Option<String>, Vec<Figure>)>>) {
    parts.push(Part::Heading("Figures".into()));
    parts.extend(note.map(|n| Part::Note(n.into())));
    match groups {
        Ok(groups) => {
            for (point, figures) in groups {
                parts.extend(point.map(|p| Part::Heading(format!("Figures at {p}"))));
                parts.extend(figures.into_iter().map(Part::Figure));
            }
        }
        Err(e) => parts.push(Part::Note(format!("No figures: {e:#}."))),
    }
}

/// Every session that worked on the study: its command, code, machine and times.
fn provenance_parts(parts: &mut Vec<Part>, dir: &Path, name: &str) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("provenance"))
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect())
        .unwrap_or_default();
    files.sort();
    parts.push(Part::Heading(format!("Provenance of {name}")));
    if files.is_empty() {
        parts.push(Part::Note("No provenance recorded.".into()));
    }
    for file in files {
        parts.push(Part::Text(read(&file)?));
    }
    Ok(())
}

fn render_html(title: &str, parts: &[Part], dir: &Path) -> Result<String> {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}}\
         pre{{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:13px}}\
         figure{{margin:1.5em 0}} img{{max-width:100%;border:1px solid #ddd}} figcaption{{color:#555}}\
         </style></head><body>\n<h1>{t}</h1>\n<p>Written by optlab {v} at {at} from <code>{d}</code>.</p>\n",
        t = escape(title),
        v = env!("CARGO_PKG_VERSION"),
        at = super::provenance::utc(std::time::SystemTime::now(), true),
        d = escape(&dir.display().to_string()),
    );
    for part in parts {
        match part {
            Part::Heading(h) => out += &format!("<h2>{}</h2>\n", escape(h)),
            Part::Text(t) => out += &format!("<pre>{}</pre>\n", escape(t)),
            Part::Note(n) => out += &format!("<p>{}</p>\n", escape(n)),
            Part::Figure(f) => {
                let png = std::fs::read(&f.png).with_context(|| format!("reading {}", f.png.display()))?;
                out += &format!(
                    "<figure><img alt=\"{name}\" src=\"data:image/png;base64,{data}\"><figcaption><b>{name}</b>: {caption}</figcaption></figure>\n",
                    name = f.name,
                    data = base64::engine::general_purpose::STANDARD.encode(png),
                    caption = escape(f.caption)
                );
            }
        }
    }
    Ok(out + "</body></html>\n")
}

fn render_markdown(title: &str, parts: &[Part], dir: &Path) -> String {
    let mut out = format!("# {title}\n\nWritten by optlab {} from `{}`.\n", env!("CARGO_PKG_VERSION"), dir.display());
    for part in parts {
        out += &match part {
            Part::Heading(h) => format!("\n## {h}\n"),
            Part::Text(t) => format!("\n```\n{}\n```\n", t.trim_end()),
            Part::Note(n) => format!("\n{n}\n"),
            Part::Figure(f) => {
                let link = f.png.strip_prefix(dir).unwrap_or(&f.png);
                format!("\n![{}]({})\n\n*{}*: {}\n", f.name, link.display(), f.name, f.caption)
            }
        };
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn name_of(dir: &Path) -> String {
    dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn html_text_is_escaped() {
        assert_eq!(super::escape("a < b & \"c\" > d"), "a &lt; b &amp; &quot;c&quot; &gt; d");
    }
}
