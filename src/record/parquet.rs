//! Rows to Parquet, written as the run goes.
//!
//! A Parquet file without its footer is unreadable, so a table is a folder of
//! small finished files (`<table>/part-<run>-<seq>.parquet`), each written under a
//! temporary name and renamed when complete: a killed run leaves only readable
//! files. pandas (`read_parquet(dir)`), polars (`scan_parquet(dir/*.parquet)`) and
//! duckdb (`read_parquet('dir/*.parquet')`) read a folder as one table.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use polars::prelude::*;

use super::schema::{Kind, Table};

/// One cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    I64(i64),
    F64(f64),
    Bool(bool),
    ListF32(Vec<f32>),
    ListF64(Vec<f64>),
    Null,
}

impl Value {
    fn fits(&self, kind: Kind, nullable: bool) -> bool {
        matches!(
            (self, kind),
            (Value::Str(_), Kind::Str)
                | (Value::I64(_), Kind::I64)
                | (Value::F64(_), Kind::F64)
                | (Value::Bool(_), Kind::Bool)
                | (Value::ListF32(_), Kind::ListF32)
                | (Value::ListF64(_), Kind::ListF64)
        ) || (nullable && *self == Value::Null)
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident via $conv:expr),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(x: $t) -> Self { Value::$v($conv(x)) }
        })*
    };
}
value_from! {
    &str => Str via String::from,
    String => Str via std::convert::identity,
    i64 => I64 via std::convert::identity,
    usize => I64 via |x: usize| x as i64,
    u64 => I64 via |x: u64| x as i64,
    f64 => F64 via std::convert::identity,
    f32 => F64 via f64::from,
    bool => Bool via std::convert::identity,
    Vec<f32> => ListF32 via std::convert::identity,
    Vec<f64> => ListF64 via std::convert::identity,
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(x: Option<T>) -> Self {
        x.map_or(Value::Null, Into::into)
    }
}

/// Buffers the rows of one table for one run and writes them out in chunks.
pub struct TableWriter {
    table: &'static Table,
    dir: PathBuf,
    prefix: String,
    rows: Vec<Vec<Value>>,
    next_part: usize,
    flush_every: usize,
}

impl TableWriter {
    /// Writes under `<root>/<table>/part-<prefix>-NNNNN.parquet`, numbering after
    /// any parts a previous (resumed) attempt left.
    pub fn new(root: &Path, table: &'static Table, prefix: &str, flush_every: usize) -> Result<Self> {
        let dir = root.join(table.name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = format!("part-{prefix}-");
        let next_part = fs::read_dir(&dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix(&stem)?.strip_suffix(".parquet")?.parse::<usize>().ok())
            .map(|n| n + 1)
            .max()
            .unwrap_or(0);
        Ok(Self { table, dir, prefix: prefix.into(), rows: Vec::new(), next_part, flush_every: flush_every.max(1) })
    }

    /// Adds a row given as `(column, value)` pairs in schema order; a name, order
    /// or type that disagrees with the schema is a bug and an error.
    pub fn push(&mut self, row: Vec<(&str, Value)>) -> Result<()> {
        let cols = self.table.columns;
        ensure!(row.len() == cols.len(), "table {}: row has {} values for {} columns", self.table.name, row.len(), cols.len());
        for ((name, value), col) in row.iter().zip(cols) {
            ensure!(*name == col.name, "table {}: got column {name:?} where the schema has {:?}", self.table.name, col.name);
            ensure!(
                value.fits(col.kind, col.nullable),
                "table {}: column {name} is {} but got {value:?}",
                self.table.name,
                col.kind.as_str()
            );
        }
        self.rows.push(row.into_iter().map(|(_, v)| v).collect());
        if self.rows.len() >= self.flush_every { self.flush() } else { Ok(()) }
    }

    /// Writes the buffered rows as one finished file (nothing when empty).
    pub fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut df = to_dataframe(self.table, &self.rows)?;
        let path = self.dir.join(format!("part-{}-{:05}.parquet", self.prefix, self.next_part));
        let tmp = path.with_extension("parquet.tmp");
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        ParquetWriter::new(file)
            .with_compression(ParquetCompression::Zstd(None))
            .finish(&mut df)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path)?;
        self.rows.clear();
        self.next_part += 1;
        Ok(())
    }
}

fn to_dataframe(table: &Table, rows: &[Vec<Value>]) -> Result<DataFrame> {
    let columns = table
        .columns
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let name: PlSmallStr = c.name.into();
            let cells = rows.iter().map(|r| &r[j]);
            match c.kind {
                Kind::Str => {
                    Column::new(name, cells.map(|v| if let Value::Str(s) = v { Some(s.as_str()) } else { None }).collect::<Vec<_>>())
                }
                Kind::I64 => Column::new(name, cells.map(|v| if let Value::I64(x) = v { Some(*x) } else { None }).collect::<Vec<_>>()),
                Kind::F64 => Column::new(name, cells.map(|v| if let Value::F64(x) = v { Some(*x) } else { None }).collect::<Vec<_>>()),
                Kind::Bool => Column::new(name, cells.map(|v| if let Value::Bool(x) = v { Some(*x) } else { None }).collect::<Vec<_>>()),
                Kind::ListF32 => {
                    let mut b = ListPrimitiveChunkedBuilder::<Float32Type>::new(name, rows.len(), 0, DataType::Float32);
                    cells.for_each(|v| if let Value::ListF32(x) = v { b.append_slice(x) } else { b.append_null() });
                    b.finish().into_series().into_column()
                }
                Kind::ListF64 => {
                    let mut b = ListPrimitiveChunkedBuilder::<Float64Type>::new(name, rows.len(), 0, DataType::Float64);
                    cells.for_each(|v| if let Value::ListF64(x) = v { b.append_slice(x) } else { b.append_null() });
                    b.finish().into_series().into_column()
                }
            }
        })
        .collect();
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// Checks that `path` is a whole Parquet file (its footer reads back).
pub fn check_part(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    ParquetReader::new(file)
        .num_rows()
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{} is not a readable Parquet file (damaged or cut short)", path.display()))?;
    Ok(())
}

/// Reads every finished part of a table under `root` into one frame.
pub fn read_table(root: &Path, table: &Table) -> Result<DataFrame> {
    read_tables(&[root], table)
}

/// Reads every finished part of a table under each of `roots` (several
/// studies' folders, e.g. a sweep's reruns) into one frame.
pub fn read_tables(roots: &[&Path], table: &Table) -> Result<DataFrame> {
    let mut parts = Vec::new();
    for root in roots {
        let dir = root.join(table.name);
        let mut mine: Vec<PathBuf> = fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        ensure!(!mine.is_empty(), "no Parquet parts in {}", dir.display());
        mine.sort();
        parts.extend(mine);
    }
    let mut frames = parts.iter().map(|p| {
        let df =
            ParquetReader::new(File::open(p)?).finish().map_err(anyhow::Error::from).with_context(|| format!("reading {}", p.display()))?;
        with_current_columns(df, table).with_context(|| format!("reading {}", p.display()))
    });
    let Some(first) = frames.next() else { bail!("no study folder to read table {} from", table.name) };
    let mut df = first?;
    for f in frames {
        df.vstack_mut(&f?)?;
    }
    Ok(df)
}

/// A part written before a nullable column joined its table reads back with
/// that column null, so the parts of a study resumed by newer code still stack.
/// (A missing column that cannot be null stays missing: its readers know what
/// folders from before it meant.)
fn with_current_columns(mut df: DataFrame, table: &Table) -> Result<DataFrame> {
    for c in table.columns.iter().filter(|c| c.nullable) {
        if df.column(c.name).is_err() {
            let dtype = match c.kind {
                Kind::Str => DataType::String,
                Kind::I64 => DataType::Int64,
                Kind::F64 => DataType::Float64,
                Kind::Bool => DataType::Boolean,
                Kind::ListF32 => DataType::List(Box::new(DataType::Float32)),
                Kind::ListF64 => DataType::List(Box::new(DataType::Float64)),
            };
            df.with_column(Column::full_null(c.name.into(), df.height(), &dtype))?;
        }
    }
    let present: Vec<&str> = table.columns.iter().map(|c| c.name).filter(|n| df.column(n).is_ok()).collect();
    Ok(df.select(present)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::schema::{Column as Col, Kind};

    const fn column(name: &'static str, nullable: bool) -> Col {
        Col { name, kind: Kind::F64, nullable, doc: "" }
    }
    static OLD: Table = Table { name: "t", doc: "", columns: &[column("a", false)] };
    static NEW: Table = Table { name: "t", doc: "", columns: &[column("a", false), column("b", true)] };

    #[test]
    fn parts_from_before_a_nullable_column_read_back_with_it_null() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = TableWriter::new(dir.path(), &OLD, "r", 1).unwrap();
        old.push(vec![("a", 1.0.into())]).unwrap();
        let mut new = TableWriter::new(dir.path(), &NEW, "s", 1).unwrap();
        new.push(vec![("a", 2.0.into()), ("b", 3.0.into())]).unwrap();
        let df = read_table(dir.path(), &NEW).unwrap();
        let b: Vec<Option<f64>> = df.column("b").unwrap().f64().unwrap().iter().collect();
        assert_eq!(b, [None, Some(3.0)]);
        // A missing column that cannot be null stays missing, for its readers to judge.
        static STRICT: Table = Table { name: "t", doc: "", columns: &[column("a", false), column("c", false)] };
        let old_only = tempfile::tempdir().unwrap();
        TableWriter::new(old_only.path(), &OLD, "r", 1).unwrap().push(vec![("a", 1.0.into())]).unwrap();
        let df = read_table(old_only.path(), &STRICT).unwrap();
        assert!(df.column("a").is_ok() && df.column("c").is_err());
    }
}
