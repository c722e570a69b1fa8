//! A GGUF file's structure checked against its size before anything is allocated from it: every
//! string length, array count, tensor count and tensor extent a header claims must fit in the
//! bytes that are actually there. The reader (candle's) allocates from those numbers; a hostile
//! or truncated file (found by fuzzing) could otherwise make it allocate without bound or panic.
use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// A reader that knows how many bytes are left.
struct Bounded<R> {
    r: R,
    left: u64,
}

impl<R: Read> Bounded<R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b)?;
        self.left = self.left.saturating_sub(N as u64);
        Ok(b)
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let got = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())?;
        if got < n {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        Ok(())
    }
}

/// The size in bytes of one element of GGUF value type `t` (strings and arrays: None).
fn scalar_size(t: u32) -> Option<u64> {
    match t {
        0 | 1 | 7 => Some(1), // u8, i8, bool
        2 | 3 => Some(2),     // u16, i16
        4 | 5 | 6 => Some(4), // u32, i32, f32
        10..=12 => Some(8),   // u64, i64, f64
        _ => None,
    }
}

/// Checks `path`'s GGUF structure against its size (see the module); an error names the field.
pub fn check(path: &Path) -> Result<()> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = Bounded { r: std::io::BufReader::new(f), left: len };
    walk(&mut r).map_err(|e| match e {
        Walk::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Error::parse(path, "GGUF file ends inside its header (truncated)"),
        Walk::Io(e) => Error::io(path, e),
        Walk::Bad(m) => Error::parse(path, format!("malformed GGUF header: {m}")),
    })
}

enum Walk {
    Io(std::io::Error),
    Bad(String),
}

impl From<std::io::Error> for Walk {
    fn from(e: std::io::Error) -> Self {
        Walk::Io(e)
    }
}

fn walk<R: Read>(r: &mut Bounded<R>) -> std::result::Result<(), Walk> {
    let magic = r.bytes::<4>()?;
    if &magic != b"GGUF" {
        return Err(Walk::Bad("not a GGUF file (no GGUF magic)".into()));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Walk::Bad(format!("GGUF version {version} (r2m reads versions 2 and 3)")));
    }
    let (n_tensors, n_kv) = (r.u64()?, r.u64()?);
    // A key-value pair takes at least 12 bytes (an empty key and a u8); a tensor entry at least 24.
    if n_kv.saturating_mul(12) > r.left || n_tensors.saturating_mul(24) > r.left {
        return Err(Walk::Bad(format!("{n_kv} metadata entries and {n_tensors} tensors do not fit in the file")));
    }
    let string = |r: &mut Bounded<R>, what: &str| -> std::result::Result<(), Walk> {
        let n = r.u64()?;
        if n > r.left {
            return Err(Walk::Bad(format!("{what}: a string of {n} bytes, past the end of the file")));
        }
        r.skip(n)?;
        Ok(())
    };
    for i in 0..n_kv {
        string(r, &format!("metadata entry {i}'s key"))?;
        let t = r.u32()?;
        value(r, t, i, 0, &string)?;
    }
    for i in 0..n_tensors {
        string(r, &format!("tensor {i}'s name"))?;
        let n_dims = r.u32()?;
        if n_dims > 8 {
            return Err(Walk::Bad(format!("tensor {i} has {n_dims} dimensions")));
        }
        let mut elems: u64 = 1;
        for _ in 0..n_dims {
            let d = r.u64()?;
            elems = elems
                .checked_mul(d)
                .filter(|&e| e <= (1u64 << 48))
                .ok_or_else(|| Walk::Bad(format!("tensor {i}'s dimensions overflow")))?;
        }
        let _ggml_type = r.u32()?;
        let _offset = r.u64()?;
    }
    Ok(())
}

fn value<R: Read>(
    r: &mut Bounded<R>,
    t: u32,
    entry: u64,
    depth: usize,
    string: &dyn Fn(&mut Bounded<R>, &str) -> std::result::Result<(), Walk>,
) -> std::result::Result<(), Walk> {
    match t {
        8 => string(r, &format!("metadata entry {entry}'s value")),
        9 => {
            if depth > 2 {
                return Err(Walk::Bad(format!("metadata entry {entry}: arrays nested more than 3 deep")));
            }
            let et = r.u32()?;
            let n = r.u64()?;
            // Every element takes at least one byte (a string its 8-byte length).
            let min = scalar_size(et).unwrap_or(if et == 8 { 8 } else { 12 });
            if n.saturating_mul(min) > r.left {
                return Err(Walk::Bad(format!("metadata entry {entry}: an array of {n} elements, past the end of the file")));
            }
            match scalar_size(et) {
                Some(s) => r.skip(n * s)?,
                None => {
                    for _ in 0..n {
                        value(r, et, entry, depth + 1, string)?;
                    }
                }
            }
            Ok(())
        }
        t => match scalar_size(t) {
            Some(s) => Ok(r.skip(s)?),
            None => Err(Walk::Bad(format!("metadata entry {entry} has value type {t}, which GGUF does not define"))),
        },
    }
}
