//! Tokenized splits and batches: tokenize once per (task, split, tokenizer, max length) and
//! cache on disk; pad each batch to its own longest row; group similar lengths together
//! (sort inside shuffled windows) to cut padding, deterministically for a given seed.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;

use super::glue::{Dataset, Label, Split, Task};
use crate::error::{Error, Result};
use crate::model::hub::sha256_file;
use crate::model::{EncodedBatch, TextInput, TextTokenizer, TokenizedRow, pad_rows};
use crate::seed::substream_rng;

/// Where tokenized splits are cached: `$QPEFT_CACHE/tokens`, else `~/.cache/qpeft/tokens`.
pub fn default_cache_dir() -> PathBuf {
    let root = match std::env::var_os("QPEFT_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".cache/qpeft"))
            .unwrap_or_else(|| std::env::temp_dir().join("qpeft-cache")),
    };
    root.join("tokens")
}

/// A split after tokenization: one unpadded row per example, with ids and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedSplit {
    pub task: Task,
    pub split: Split,
    pub rows: Vec<TokenizedRow>,
    pub ids: Vec<usize>,
    pub labels: Vec<Option<Label>>,
    pad_id: u32,
}

/// A padded batch with the examples it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub encoded: EncodedBatch,
    /// Positions of the examples in the split.
    pub indices: Vec<usize>,
    pub labels: Vec<Option<Label>>,
}

impl TokenizedSplit {
    /// Tokenizes `dataset`, reading and writing the cache in `cache_dir` if given.
    pub fn new(
        dataset: &Dataset,
        tokenizer: &TextTokenizer,
        cache_dir: Option<&Path>,
    ) -> Result<Self> {
        let cache_file = match cache_dir {
            Some(dir) => Some(dir.join(cache_name(dataset, tokenizer)?)),
            None => None,
        };
        if let Some(rows) = cache_file
            .as_deref()
            .and_then(|f| read_cache(f, dataset.examples.len()))
        {
            return Ok(Self::assemble(dataset, rows, tokenizer.pad_id()));
        }
        let inputs: Vec<TextInput> = dataset
            .examples
            .iter()
            .map(|e| TextInput {
                first: e.text_a.clone(),
                second: e.text_b.clone(),
            })
            .collect();
        let rows = tokenizer.encode_rows(&inputs)?;
        if let Some(file) = &cache_file
            && let Err(e) = write_cache(file, &rows)
        {
            // The cache only saves time; the tokenized rows are in hand.
            eprintln!("warning: could not write the token cache: {e:#}");
        }
        Ok(Self::assemble(dataset, rows, tokenizer.pad_id()))
    }

    fn assemble(dataset: &Dataset, rows: Vec<TokenizedRow>, pad_id: u32) -> Self {
        TokenizedSplit {
            task: dataset.task,
            split: dataset.split,
            rows,
            ids: dataset.examples.iter().map(|e| e.id).collect(),
            labels: dataset.examples.iter().map(|e| e.label).collect(),
            pad_id,
        }
    }

    /// Loads `split` of `task` from the GLUE folder `dir` and tokenizes it (cached in
    /// `cache_dir` when given).
    pub fn load(
        dir: &Path,
        task: Task,
        split: Split,
        tokenizer: &TextTokenizer,
        cache_dir: Option<&Path>,
    ) -> Result<Self> {
        Self::new(&super::glue::load(dir, task, split)?, tokenizer, cache_dir)
    }

    /// The task's dev split(s), tokenized (MNLI: matched, then mismatched).
    pub fn dev_splits(
        dir: &Path,
        task: Task,
        tokenizer: &TextTokenizer,
        cache_dir: Option<&Path>,
    ) -> Result<Vec<Self>> {
        task.dev_splits()
            .iter()
            .map(|&split| Self::load(dir, task, split, tokenizer, cache_dir))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// A seeded random subset of `n` examples (all of them if `n` is not smaller), in the
    /// split's order.
    pub fn subsample(&self, n: usize, seed: u64) -> Self {
        if n >= self.len() {
            return self.clone();
        }
        let mut chosen: Vec<usize> = (0..self.len()).collect();
        chosen.shuffle(&mut substream_rng(seed, "train-subsample"));
        chosen.truncate(n);
        chosen.sort_unstable();
        TokenizedSplit {
            task: self.task,
            split: self.split,
            rows: chosen.iter().map(|&i| self.rows[i].clone()).collect(),
            ids: chosen.iter().map(|&i| self.ids[i]).collect(),
            labels: chosen.iter().map(|&i| self.labels[i]).collect(),
            pad_id: self.pad_id,
        }
    }

    pub fn lengths(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.ids.len()).collect()
    }

    /// The examples at `indices`, padded to their longest row.
    pub fn batch(&self, indices: &[usize]) -> Batch {
        Batch {
            encoded: pad_rows(indices.iter().map(|&i| &self.rows[i]), self.pad_id),
            indices: indices.to_vec(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Training order for `epoch`: shuffled, with lengths grouped in windows of `window`
    /// batches (see [`length_grouped_batches`]).
    pub fn train_batches(
        &self,
        batch_size: usize,
        window: usize,
        seed: u64,
        epoch: usize,
    ) -> Vec<Vec<usize>> {
        length_grouped_batches(&self.lengths(), batch_size, window, seed, epoch)
    }

    /// Evaluation order: longest first, so that each batch pads little; covers every example once.
    pub fn eval_batches(&self, batch_size: usize) -> Vec<Vec<usize>> {
        let lengths = self.lengths();
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        order
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }
}

/// Shuffles all examples with the `data-order/epoch-N` sub-stream of `seed`, cuts the order into
/// windows of `window` batches, sorts each window by length (longest first), cuts it into
/// batches, and shuffles the batches. Every example appears exactly once. A window of one batch
/// is plain shuffling: sorting inside a batch changes only its padding order.
///
/// Why the window matters: a window that spans much of a small task makes each batch one length
/// band, and on tasks whose genres differ in length (STS-B) one genre and label range, so the
/// batch gradients vary far more than under plain shuffling (docs/results.md measures it).
pub fn length_grouped_batches(
    lengths: &[usize],
    batch_size: usize,
    window: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let window = window.max(1);
    let mut rng = substream_rng(seed, &format!("data-order/epoch-{epoch}"));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for chunk in order.chunks_mut(window * batch_size) {
        chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// `<task>-<split>-L<max>-<data sha>-<tokenizer sha>.tokens`: any change of data file,
/// tokenizer or max length gives a new name.
fn cache_name(dataset: &Dataset, tokenizer: &TextTokenizer) -> Result<String> {
    let data_sha = sha256_file(&dataset.path)?;
    Ok(format!(
        "{}-{}-L{}-{}-{}.tokens",
        dataset.task,
        dataset.split,
        tokenizer.max_length(),
        &data_sha[..16],
        &tokenizer.sha256()[..16]
    ))
}

const CACHE_MAGIC: &[u8; 8] = b"QPTOKV1\0";

/// Format: magic, u64 row count, then per row u32 length, ids (u32), type ids (u8); little endian.
fn write_cache(file: &Path, rows: &[TokenizedRow]) -> Result<()> {
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut bytes =
        Vec::with_capacity(16 + rows.iter().map(|r| 4 + 5 * r.ids.len()).sum::<usize>());
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for row in rows {
        bytes.extend_from_slice(&(row.ids.len() as u32).to_le_bytes());
        for id in &row.ids {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        bytes.extend(row.type_ids.iter().map(|&t| t as u8));
    }
    let mut partial = tempfile::NamedTempFile::new_in(&dir).map_err(|e| Error::io(&dir, e))?;
    partial.write_all(&bytes).map_err(|e| Error::io(file, e))?;
    partial
        .persist(file)
        .map_err(|e| Error::io(file, e.error))?;
    Ok(())
}

/// The cached rows, or `None` if the file is absent, damaged or of another row count.
fn read_cache(file: &Path, expected_rows: usize) -> Option<Vec<TokenizedRow>> {
    let bytes = std::fs::read(file).ok()?;
    let mut rest = bytes.strip_prefix(CACHE_MAGIC)?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let count = u64::from_le_bytes(take(8)?.try_into().ok()?) as usize;
    if count != expected_rows {
        return None;
    }
    let mut rows = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let ids = take(4 * len)?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        let type_ids = take(len)?.iter().map(|&t| u32::from(t)).collect();
        rows.push(TokenizedRow { ids, type_ids });
    }
    take(1).is_none().then_some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HF's `LengthGroupedSampler` sorts windows of up to 50 batches.
    const HF_WINDOW: usize = 50;

    #[test]
    fn length_grouping_covers_each_example_once_and_is_deterministic() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 97 + 3).collect();
        let a = length_grouped_batches(&lengths, 8, HF_WINDOW, 42, 0);
        assert_eq!(a, length_grouped_batches(&lengths, 8, HF_WINDOW, 42, 0));
        assert_ne!(a, length_grouped_batches(&lengths, 8, HF_WINDOW, 42, 1));
        assert_ne!(a, length_grouped_batches(&lengths, 8, HF_WINDOW, 7, 0));
        let mut seen: Vec<usize> = a.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert!(a.iter().all(|b| b.len() <= 8));
    }

    #[test]
    fn a_window_of_one_batch_is_plain_shuffling() {
        let lengths: Vec<usize> = (0..100).map(|i| (i * 7919) % 97 + 3).collect();
        let batches = length_grouped_batches(&lengths, 8, 1, 42, 3);
        // The same stream shuffles the examples, then the batches cut from them in order.
        let mut rng = substream_rng(42, "data-order/epoch-3");
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.shuffle(&mut rng);
        let mut plain: Vec<Vec<usize>> = order
            .chunks(8)
            .map(|c| {
                let mut c = c.to_vec();
                c.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
                c
            })
            .collect();
        plain.shuffle(&mut rng);
        assert_eq!(batches, plain);
    }

    #[test]
    fn length_grouping_cuts_padding() {
        let lengths: Vec<usize> = (0..4000).map(|i| (i * 7919) % 120 + 5).collect();
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
                .sum()
        };
        let grouped = length_grouped_batches(&lengths, 32, HF_WINDOW, 1, 0);
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.shuffle(&mut substream_rng(1, "test"));
        let random: Vec<Vec<usize>> = order.chunks(32).map(<[usize]>::to_vec).collect();
        let real: usize = lengths.iter().sum();
        // Random batches pad to nearly the maximum; grouped ones stay close to the real length.
        assert!(
            padded(&grouped) < real * 11 / 10,
            "{} vs {real}",
            padded(&grouped)
        );
        assert!(padded(&random) > real * 3 / 2);
    }

    #[test]
    fn cache_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.tokens");
        let rows = vec![
            TokenizedRow {
                ids: vec![101, 7, 102],
                type_ids: vec![0, 0, 0],
            },
            TokenizedRow {
                ids: vec![101, 9, 102, 4, 102],
                type_ids: vec![0, 0, 0, 1, 1],
            },
        ];
        write_cache(&file, &rows).unwrap();
        assert_eq!(read_cache(&file, 2), Some(rows));
        assert_eq!(read_cache(&file, 3), None);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(read_cache(&file, 2), None);
    }
}
