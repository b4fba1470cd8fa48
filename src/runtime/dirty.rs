//! The set of source keys a batch must re-derive. It lives in memory up to a limit, then spills
//! to a temporary file, so a transaction touching millions of rows never holds them all in RAM.
//! Duplicates across memory and file are harmless: re-deriving a key twice writes the same value.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};

use super::derive::KeyTuple;
use crate::error::{Error, Result};

pub struct DirtyKeys {
    mem: HashSet<KeyTuple>,
    spill: Option<BufWriter<File>>,
    spilled: usize,
    limit: usize,
}

impl DirtyKeys {
    pub fn new(limit: usize) -> DirtyKeys {
        DirtyKeys { mem: HashSet::new(), spill: None, spilled: 0, limit: limit.max(1) }
    }

    pub fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.spilled == 0
    }

    /// Keys held (an upper bound: spilled keys may repeat).
    pub fn len(&self) -> usize {
        self.mem.len() + self.spilled
    }

    pub fn insert(&mut self, key: KeyTuple) -> Result<()> {
        self.mem.insert(key);
        if self.mem.len() >= self.limit {
            self.spill_mem()?;
        }
        Ok(())
    }

    fn spill_mem(&mut self) -> Result<()> {
        if self.spill.is_none() {
            let file = tempfile::tempfile().map_err(|e| Error::fatal("cannot create a spill file for a large transaction").with_detail(e))?;
            tracing::info!(limit = self.limit, "a large transaction: spilling dirty keys to a temporary file");
            self.spill = Some(BufWriter::new(file));
        }
        let w = self.spill.as_mut().expect("spill file");
        for key in self.mem.drain() {
            serde_json::to_writer(&mut *w, &key).map_err(|e| Error::fatal("cannot write the spill file").with_detail(e))?;
            w.write_all(b"\n")?;
            self.spilled += 1;
        }
        Ok(())
    }

    /// Reads every key back, `chunk` at a time, without consuming them (a failed flush is
    /// retried with the same keys); [`DirtyKeys::clear`] empties the set after success.
    pub fn chunks(&mut self, chunk: usize) -> Result<KeyChunks<'_>> {
        let file = match self.spill.as_mut() {
            Some(w) => {
                w.flush()?;
                let mut f = w.get_ref().try_clone()?;
                f.seek(SeekFrom::Start(0))?;
                Some(BufReader::new(f).lines())
            }
            None => None,
        };
        Ok(KeyChunks { file, mem: self.mem.iter(), chunk: chunk.max(1) })
    }

    pub fn clear(&mut self) {
        self.mem.clear();
        self.spill = None;
        self.spilled = 0;
    }
}

pub struct KeyChunks<'a> {
    file: Option<std::io::Lines<BufReader<File>>>,
    mem: std::collections::hash_set::Iter<'a, KeyTuple>,
    chunk: usize,
}

impl KeyChunks<'_> {
    pub fn next_chunk(&mut self) -> Result<Option<Vec<KeyTuple>>> {
        let mut buf = Vec::with_capacity(self.chunk.min(4096));
        if let Some(lines) = self.file.as_mut() {
            while buf.len() < self.chunk {
                match lines.next() {
                    Some(line) => buf.push(serde_json::from_str(&line?).map_err(|e| Error::fatal("the spill file is corrupt").with_detail(e))?),
                    None => {
                        self.file = None;
                        break;
                    }
                }
            }
        }
        while buf.len() < self.chunk {
            match self.mem.next() {
                Some(k) => buf.push(k.clone()),
                None => break,
            }
        }
        Ok((!buf.is_empty()).then_some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_past_the_limit_and_returns_every_key() {
        let mut d = DirtyKeys::new(10);
        for i in 0..95 {
            d.insert(vec![i.to_string(), "x:y".into()]).unwrap();
        }
        d.insert(vec!["3".into(), "x:y".into()]).unwrap();
        assert!(d.mem.len() < 10, "memory stays under the limit");
        assert!(!d.is_empty());
        for _round in 0..2 {
            // Reading is repeatable (a failed flush retries with the same keys).
            let mut seen = HashSet::new();
            let mut chunks = 0;
            let mut it = d.chunks(7).unwrap();
            while let Some(c) = it.next_chunk().unwrap() {
                assert!(c.len() <= 7);
                chunks += 1;
                seen.extend(c);
            }
            assert_eq!(seen.len(), 95);
            assert!(chunks >= 14);
        }
        d.clear();
        assert!(d.is_empty());
    }
}
