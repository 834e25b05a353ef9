//! Checkpoints as safetensors: model parameters, every optimizer state buffer and
//! a few counters, so a killed study resumes where its last checkpoint was.
//! Files are written under a temporary name and renamed: never half a checkpoint.
//! A SHA-256 of every tensor and metadata entry is stored with them and checked
//! on load, so a corrupted file is an error naming it, never a resumed run that
//! silently trains from damaged weights.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, ensure};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use sha2::{Digest, Sha256};

/// The metadata key of the checksum.
const CHECKSUM: &str = "sha256";

/// Named f32 tensors (flat) plus string metadata.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub tensors: Vec<(String, Vec<f32>)>,
    pub metadata: HashMap<String, String>,
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<()> {
        let views = self
            .tensors
            .iter()
            .map(|(name, data)| Ok((name.clone(), TensorView::new(Dtype::F32, vec![data.len()], bytemuck::cast_slice(data))?)))
            .collect::<Result<Vec<_>>>()?;
        let mut metadata = self.metadata.clone();
        metadata.insert(CHECKSUM.into(), self.checksum());
        let tmp = path.with_extension("tmp");
        safetensors::serialize_to_file(views, Some(metadata), &tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    }

    /// SHA-256 over the tensors and metadata in name order (the checksum entry excluded).
    fn checksum(&self) -> String {
        let mut h = Sha256::new();
        let mut tensors: Vec<_> = self.tensors.iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, data) in tensors {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((data.len() as u64).to_le_bytes());
            h.update(bytemuck::cast_slice::<f32, u8>(data));
        }
        let mut meta: Vec<_> = self.metadata.iter().filter(|(k, _)| *k != CHECKSUM).collect();
        meta.sort();
        for (k, v) in meta {
            for part in [k, v] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        format!("{:x}", h.finalize())
    }

    /// A checkpoint written by [`Self::save`], its checksum verified.
    pub fn load(path: &Path) -> Result<Self> {
        let mut ck = Self::read(path)?;
        let stored = ck.metadata.remove(CHECKSUM).with_context(|| format!("checkpoint {} has no checksum", path.display()))?;
        ensure!(
            ck.checksum() == stored,
            "checkpoint {} is corrupt: its contents do not match its SHA-256 (delete it to restart that run from scratch)",
            path.display()
        );
        Ok(ck)
    }

    /// Any safetensors file of f32 tensors (e.g. fixtures written by PyTorch), unverified.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)?;
        let mut tensors = Vec::new();
        for (name, view) in st.tensors() {
            ensure!(view.dtype() == Dtype::F32, "{}: tensor {name} is {:?}, expected F32", path.display(), view.dtype());
            // Copy through an aligned Vec: the file's bytes need not be 4-aligned.
            let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            tensors.push((name, data));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { tensors, metadata: meta.metadata().clone().unwrap_or_default() })
    }

    pub fn tensor(&self, name: &str) -> Result<&[f32]> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, d)| d.as_slice()).ok_or_else(|| anyhow!("checkpoint has no tensor {name:?}"))
    }

    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata.get(key).map(String::as_str).ok_or_else(|| anyhow!("checkpoint has no metadata {key:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let mut ck = Checkpoint::default();
        ck.tensors.push(("a".into(), vec![1.0, -2.5, f32::MAX]));
        ck.tensors.push(("b".into(), vec![0.25; 7]));
        ck.metadata.insert("step".into(), "42".into());
        ck.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(back, ck);
        assert_eq!(back.meta("step").unwrap(), "42");
        assert!(back.tensor("missing").is_err());

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let err = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a valid safetensors"), "{err}");

        // One flipped bit in a value is caught by the checksum, naming the file.
        ck.save(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", Checkpoint::load(&path).unwrap_err());
        assert!(err.contains("corrupt") && err.contains("c.safetensors"), "{err}");
    }
}
