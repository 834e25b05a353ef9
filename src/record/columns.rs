//! A read table's columns as plain vectors, for code that walks rows.

use anyhow::Result;
use polars::prelude::{DataFrame, DataType};

/// A string column (empty strings where null).
pub fn strings(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    Ok(df.column(name)?.str()?.iter().map(|s| s.unwrap_or_default().to_string()).collect())
}

pub fn ints(df: &DataFrame, name: &str) -> Result<Vec<Option<i64>>> {
    Ok(df.column(name)?.i64()?.iter().collect())
}

pub fn floats(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>> {
    Ok(df.column(name)?.f64()?.iter().collect())
}

/// A list column as f64 lists (empty where null, NaN for a null element).
pub fn lists(df: &DataFrame, name: &str) -> Result<Vec<Vec<f64>>> {
    let list = df.column(name)?.list()?;
    (0..list.len())
        .map(|k| match list.get_as_series(k) {
            None => Ok(Vec::new()),
            Some(s) => Ok(s.cast(&DataType::Float64)?.f64()?.iter().map(|v| v.unwrap_or(f64::NAN)).collect()),
        })
        .collect()
}
